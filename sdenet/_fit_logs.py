"""`fit`: the user entry point over the likelihood families."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np

from ._fit import (FitDiagnosticWarning, diagnostics, loss_curve_idata, map_estimate,
                   pointwise_over_draws, run_nuts, sample_stats, stamp,
                   warn_on_diagnostics)
from numpyro.infer import init_to_value

from ._infer_ar import ar1_draws
from ._infer_scaling import (prepare_scaling, scaling_init, scaling_model,
                             scaling_pointwise, scaling_working)

SCALING_VARS = ["L_star", "alpha", "beta", "F0", "rate", "A_total", "obs_sd"]


def _complete(params, modes, observation_noise, shape=()):
    """Add the sites a K = 1 or noise-free model does not sample."""
    params = dict(params)
    if not observation_noise or "obs_sd" not in params:
        params.setdefault("obs_sd", np.zeros(shape))
    if modes == 1:
        params["A_share"] = np.ones(shape + (1,))
        params["floor_share"] = np.ones(shape + (1,))
    return params


def _interior(values):
    """Move a mode off the boundary of its support (a share of exactly 0, tied ordered
    rates), where NumPyro cannot start: the unconstrained transform is infinite there."""
    out = dict(values)
    for k in ("A_share", "floor_share"):
        if k in out:
            x = np.clip(np.asarray(out[k], float), 1e-6, None)
            out[k] = x / x.sum()
    if "log_rate" in out:
        r = np.asarray(out["log_rate"], float)
        out["log_rate"] = r + 1e-6 * np.arange(r.size)
    return out


def _scaling_idata(runs, modes, *, chains, warmup, samples, seed, progress, priors,
                   plateau_check=True, observation_noise=True):
    data = prepare_scaling(runs, plateau_check=plateau_check)
    jdata = data.to_jax()
    kwargs = dict(data=jdata, modes=modes, eta_ref=data.eta_ref, b_ref=data.b_ref,
                  scale=data.scale, priors=priors, observation_noise=observation_noise)
    # pilot: the posterior mode under the full Gaussian surrogate, which fixes the
    # working covariance of the likelihood (see `_infer_ar`)
    start = {k: v for k, v in scaling_init(data, modes).items()
             if observation_noise or k != "obs_sd"}
    pilot = map_estimate(scaling_model, kwargs, seed=seed,
                         init_strategy=init_to_value(values=start))
    pilot = _complete({k: np.asarray(v) for k, v in pilot.items()}, modes,
                      observation_noise)
    working = scaling_working(pilot, jdata, data.eta_ref, data.b_ref, data.scale)
    sites = ["L_star", "log_rate", "A_total", "A_share", "floor_share", "log_F0",
             "alpha", "beta"]
    init = _interior({k: pilot[k] for k in sites if modes > 1 or "share" not in k})
    # NUTS with the Laplace covariance of the working-covariance posterior as its mass
    # matrix, chains started at draws from it (see `run_nuts`)
    laplace = map_estimate(scaling_model, kwargs | {"working": working}, seed=seed,
                           init_strategy=init_to_value(values=init), laplace=True)
    mcmc = run_nuts(scaling_model, kwargs | {"working": working}, chains=chains,
                    warmup=warmup, samples=samples, seed=seed, progress=progress,
                    init_strategy=init_to_value(values=init), laplace=laplace)
    post = mcmc.get_samples(group_by_chain=True)
    params = _complete({k: post[k] for k in sites if k in post}, modes, False,
                       post["alpha"].shape)
    ll, mean, sd = pointwise_over_draws(scaling_pointwise, params, jdata, data.eta_ref,
                                        data.b_ref, data.scale, working)
    n_chain, n_draw = post["alpha"].shape[:2]
    r, t = data.y.shape
    ll = ll.reshape(n_chain, n_draw, r, t)
    mean = mean.reshape(n_chain, n_draw, r, t)
    sd = sd.reshape(n_chain, n_draw, r, t)
    var = np.broadcast_to(np.asarray(working["var"]), mean.shape)
    cov = np.concatenate([np.zeros_like(np.asarray(working["var"])[:, :1]),
                          np.asarray(working["cov"])], axis=1)
    pred = ar1_draws(mean, var, np.broadcast_to(cov, mean.shape),
                     np.random.default_rng(seed))
    idata = loss_curve_idata(
        post, sample_stats(mcmc), ll, mean, pred, y=data.y, mask=data.mask, lr=data.lr,
        batch_size=data.batch_size, step=data.t, names=data.names,
        coords={"mode": np.arange(modes)},
        dims={"log_rate": ["mode"], "rate": ["mode"], "A_share": ["mode"],
              "floor_share": ["mode"], "floor": ["run"]})
    return idata, data


def fit(runs, model: str = "scaling", *, modes="auto", chains: int = 4,
        warmup: int = 1000, samples: int = 500, seed: int = 0, progress: bool = False,
        priors: dict | None = None, max_modes: int = 3, plateau_check: bool = True,
        observation_noise: bool | None = None, problem=None, noise: str = "minibatch",
        theta0=None):
    """Fit a noise model to training logs with NUTS; returns ArviZ InferenceData.

    **Arguments:**

    - `runs`: `Run` objects (`read_logs`).
    - `model`: "scaling" (logs alone: OU spectrum with floor F0 (η/η_ref)^α
      (B/B_ref)^(−β)) or "loss-curve" (runs of a known `problem` started at `theta0`
      (default θ0); the closure gives the loss moments as functions of the `noise`
      parameters: "minibatch" → scale s, "isotropic" → σ, "layerwise" → σ_l).
    - `modes`: number K of OU modes, or "auto" to choose K ∈ 1..max_modes by LOO
      (`az.compare`); the comparison is stored in the attrs.
    - `chains`, `warmup`, `samples`, `seed`: NUTS settings.
    - `priors`: override default priors by site name (NumPyro distributions).
    - `observation_noise`: model independent noise of logged minibatch losses
      (default: on, except for runs read from sdenet's own netCDF ensembles, which
      log the full-batch loss).

    Warns (`FitDiagnosticWarning`) on r_hat > 1.01, bulk ESS < 100 or divergences.
    """
    if model not in ("scaling", "loss-curve"):
        raise ValueError(f"--model {model!r}: `fit` takes logs for 'scaling' or "
                         "'loss-curve'; weight trajectories go to `fit_trajectory`.")
    if chains < 1 or warmup < 1 or samples < 1:
        raise ValueError("--chains, --warmup and --samples must be ≥ 1.")
    if observation_noise is None:
        observation_noise = not all(r.source.endswith(".nc") for r in runs)
    config = {"family": model, "observation_noise": bool(observation_noise),
              "chains": chains, "warmup": warmup, "samples": samples,
              "seed": seed, "runs": len(runs)}
    if model == "loss-curve":
        return _fit_loss_curve(runs, problem, noise, theta0, config, priors, progress)
    candidates = list(range(1, max_modes + 1)) if modes == "auto" else [int(modes)]
    fits = {}
    for k in candidates:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata, data = _scaling_idata(runs, k, chains=chains, warmup=warmup,
                                         samples=samples, seed=seed, progress=progress,
                                         priors=priors, plateau_check=plateau_check,
                                         observation_noise=observation_noise)
        fits[f"K={k}"] = idata
    if len(fits) > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = az.compare(fits, ic="loo")
        best = table.index[0]
        config["mode_comparison"] = table[["rank", "elpd_loo", "p_loo", "elpd_diff",
                                           "dse", "weight"]].round(4).to_dict()
    else:
        best = next(iter(fits))
    idata = fits[best]
    config["modes"] = int(best.split("=")[1])
    config["eta_ref"], config["b_ref"] = data.eta_ref, data.b_ref
    diag = diagnostics(idata, [v for v in SCALING_VARS if v in idata.posterior])
    config["diagnostics"] = diag
    config["diagnostic_warnings"] = warn_on_diagnostics(diag)
    return stamp(idata, config)


def _fit_loss_curve(runs, problem, noise, theta0, config, priors, progress):
    from ._infer_loss_curve import fit_loss_curve

    if problem is None:
        raise ValueError("--model loss-curve needs the problem the logs come from "
                         "(--problem NAME and its options).")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata, data = fit_loss_curve(
            runs, problem, noise, chains=config["chains"], warmup=config["warmup"],
            samples=config["samples"], seed=config["seed"], progress=progress,
            priors=priors, observation_noise=config["observation_noise"], theta0=theta0)
    config |= {"noise": noise, "problem": problem.config, "b_ref": data.b_ref,
               "custom_theta0": theta0 is not None}
    names = [v for v in ("s", "sigma", "obs_sd") if v in idata.posterior]
    diag = diagnostics(idata, names)
    config["diagnostics"] = diag
    config["diagnostic_warnings"] = warn_on_diagnostics(diag)
    return stamp(idata, config)


__all__ = ["fit", "FitDiagnosticWarning"]
