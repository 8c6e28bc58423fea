"""The loss-curve family: logged losses of a known problem, moments from the closure.

Each run r (learning rate η_r, batch size B_r) of a known problem logs its train loss
at integer steps. The first-order closure in its discrete form (`_loss_moments`: the
exact moments of SGD / Euler–Maruyama with dt = 1 on the linearised network) gives
E L_r(t), Var L_r(t) and Cov(L_r(t_k), L_r(t_{k−1})) as polynomials in the noise
parameters, so the likelihood is the moment-matched AR(1) of `_infer_ar` with

    noise "minibatch":  s (covariance s κ Σ / B, s = 1 is SGD),  c = (s, s², s³)
    noise "isotropic":  σ (D = σ I),                             c = (σ²,)
    noise "layerwise":  σ_l per layer (D = diag σ_l),             c = (σ_1², …)

plus optional independent observation noise σ_obs² (B_r/B_ref)^(−1) for logged
minibatch losses. Exact for networks linear in their weights (``linear``,
``random-features``); for others it is the linearised model around θ0, trustworthy
early in training or near a minimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from ._infer_ar import ar1_cov_logpdf, ar1_draws
from ._logs import LogError
from ._loss_moments import LossMoments, combine, loss_moments, noise_terms
from ._noise import Isotropic, Layerwise, Minibatch

NOISE_KINDS = ("minibatch", "isotropic", "layerwise")
NUGGET = 1e-6  # relative to the loss: float rounding of logged values


@dataclass(frozen=True)
class LossCurveData:
    """Runs padded to a common length, with their closure coefficients."""

    step: np.ndarray  # (R, T)
    y: np.ndarray  # (R, T)
    mask: np.ndarray  # (R, T)
    lr: np.ndarray  # (R,)
    batch_size: np.ndarray  # (R,)
    moments: LossMoments  # arrays with leading run axis
    names: tuple
    noise: str
    n_terms: int
    b_ref: float
    scale: dict


def _noise_model(kind, problem, batch_size):
    if kind == "minibatch":
        return Minibatch(int(batch_size))
    if kind == "isotropic":
        return Isotropic(1.0)
    return Layerwise(np.ones(problem.n_layers))


def prepare_loss_curve(runs, problem, noise="minibatch", theta0=None,
                       minibatch_logs=False) -> LossCurveData:
    """Validate runs, pad them and compute each run's loss-moment coefficients.

    ``minibatch_logs``: the logged losses are minibatch losses (observation noise), so
    the step-0 check allows their sampling spread.
    """
    if noise not in NOISE_KINDS:
        raise ValueError(f"--noise must be one of {NOISE_KINDS}, got {noise!r}.")
    missing = [r.name for r in runs if r.lr is None or
               (noise == "minibatch" and r.batch_size is None)]
    if missing:
        need = "lr and batch_size" if noise == "minibatch" else "lr"
        raise LogError(f"the loss-curve model needs {need} for every run; missing for "
                       f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}: add "
                       "columns, a sidecar, or --lr/--batch-size.")
    for r in runs:
        bad = np.flatnonzero((r.step != np.round(r.step)) | (r.step < 0))
        if bad.size:
            raise LogError(f"{r.source}: run {r.name!r} logs step {r.step[bad[0]]:g}; the "
                           "loss-curve model needs integer SGD steps ≥ 0.")
        if np.any(np.diff(r.step) <= 0):
            raise LogError(f"{r.source}: run {r.name!r} has repeated or decreasing steps; "
                           "sort the log or remove duplicate rows.")
        if not (r.lr > 0):
            raise LogError(f"{r.source}: run {r.name!r} has lr={r.lr}; it must be > 0.")
        if noise == "minibatch":
            b = r.batch_size
            if b != round(b) or not 1 <= b <= problem.n_train:
                raise LogError(
                    f"{r.source}: run {r.name!r} has batch_size={b:g}; problem "
                    f"{problem.name!r} has N = {problem.n_train} training points, so it "
                    f"must be an integer in [1, {problem.n_train}].")
    theta0 = problem.theta0 if theta0 is None else jnp.asarray(theta0)
    length = max(len(r.step) for r in runs)
    n = len(runs)
    step = np.zeros((n, length), np.int64)
    y = np.zeros((n, length))
    mask = np.zeros((n, length), bool)
    per_run = []
    for k, r in enumerate(runs):
        m = len(r.step)
        step[k, :m], y[k, :m], mask[k, :m] = np.round(r.step), r.loss, True
        step[k, m:], y[k, m:] = step[k, m - 1], r.loss[-1]  # Δ = 0: masked padding
        model = _noise_model(noise, problem, r.batch_size or 1)
        kind, basis = noise_terms(problem, model)
        kb = model.kappa(problem.n_train) / model.batch_size if kind == "minibatch" \
            else 0.0
        per_run.append(loss_moments(problem, theta0, jnp.asarray(r.lr, theta0.dtype),
                                    jnp.asarray(step[k]), kind,
                                    jnp.asarray(basis, theta0.dtype),
                                    jnp.asarray(kb, theta0.dtype)))
    moments = LossMoments(*(np.stack([np.asarray(getattr(mo, f)) for mo in per_run])
                            for f in LossMoments._fields))
    _check_start(runs, step, moments, problem, theta0, minibatch_logs)
    bs = np.array([r.batch_size or 1.0 for r in runs], float)
    tail = [r.loss[len(r.loss) * 3 // 4:] for r in runs]
    jitter = float(np.nanmedian([np.std(np.diff(s)) if len(s) > 2 else np.nan
                                 for s in tail] + [np.nan])) / np.sqrt(2)
    jitter = jitter if np.isfinite(jitter) else 1e-3 * float(np.median(np.abs(y)))
    excess = [np.mean(y[k, mask[k]][-max(1, mask[k].sum() // 4):]
                      - moments.mean0[k, mask[k]][-max(1, mask[k].sum() // 4):])
              for k in range(n)]
    unit = [float(moments.mean1[k, 0, mask[k]][-1]) for k in range(n)]
    ratios = [e / u for e, u in zip(excess, unit) if u > 0 and e > 0]
    guess = float(np.median(ratios)) if ratios else 1.0  # σ² (or s) of the prior centre
    scale = {"jitter": max(jitter, 1e-12), "noise_guess": max(guess, 1e-12),
             "loss": float(np.median(np.abs(y[mask])))}
    return LossCurveData(step, y, mask, np.array([r.lr for r in runs], float), bs,
                         moments, tuple(r.name for r in runs), noise,
                         per_run[0].mean1.shape[0],
                         float(np.exp(np.mean(np.log(bs)))), scale)


def _check_start(runs, step, moments, problem, theta0, minibatch_logs):
    """A run that logs step 0 must start at the problem's initial loss (within 5 sd of
    a minibatch loss when the logs are minibatch losses)."""
    per_sample = np.asarray(problem.per_sample_loss(theta0))
    for k, r in enumerate(runs):
        if step[k, 0] == 0:
            expect = float(moments.mean0[k, 0])
            tol = 1e-3 * abs(expect) + 1e-9
            if minibatch_logs:
                b = r.batch_size or 1.0
                kappa = (problem.n_train - b) / max(problem.n_train - 1, 1)
                tol += 5 * float(np.std(per_sample)) * np.sqrt(max(kappa, 0.0) / b)
            if abs(r.loss[0] - expect) > tol:
                raise LogError(
                    f"{r.source}: run {r.name!r} logs loss {r.loss[0]:.6g} at step 0 but "
                    f"problem {problem.name!r} starts at {expect:.6g}: the log does not "
                    "come from this problem (check --problem and its options, e.g. "
                    "--n-train, --width, --data-seed).")


def noise_weights(kind, params, n_terms):
    """The noise-term weights c of `_loss_moments` from the model parameters."""
    if kind == "minibatch":
        s = params["s"]
        return jnp.stack([s**k for k in range(1, n_terms + 1)], axis=-1)
    if kind == "isotropic":
        return params["sigma"][..., None] ** 2
    return params["sigma"] ** 2


def loss_curve_model(data: dict, *, kind: str, n_terms: int, b_ref: float, scale: dict,
                     priors: dict | None = None, observation_noise: bool = False,
                     working: dict | None = None):
    """NumPyro model of the loss-curve family (see module docstring).

    ``working``: a fixed working covariance {"var", "cov"} (see `_infer_ar`); σ_obs then
    only enters through it and is not sampled.
    """
    priors = priors or {}
    if kind == "minibatch":
        params = {"s": numpyro.sample("s", priors.get("s", dist.LogNormal(0.0, 1.0)))}
    else:
        prior = priors.get("sigma", dist.LogNormal(
            0.5 * np.log(scale["noise_guess"]), 1.5))
        if kind == "layerwise":
            prior = prior.expand([n_terms]).to_event(1)
        params = {"sigma": numpyro.sample("sigma", prior)}
    params["obs_sd"] = (numpyro.sample("obs_sd", priors.get(
        "obs_sd", dist.HalfNormal(3.0 * scale["jitter"])))
        if observation_noise and working is None else jnp.zeros(()))
    ll = loss_curve_pointwise(params, data, kind, n_terms, b_ref, scale, working)[0]
    numpyro.factor("loglik", jnp.sum(ll))


def loss_curve_moments(params, data, kind, n_terms, b_ref, scale):
    """Mean curve, marginal variance (observation noise and nugget included) and lag-1
    covariance of every run's logged loss for one parameter point."""
    c = noise_weights(kind, params, n_terms)
    moments = LossMoments(*(data[f] for f in LossMoments._fields))
    mean, var, cov = combine(moments, c)
    obs_var = (params["obs_sd"] ** 2 * (data["batch_size"] / b_ref) ** -1.0)[:, None]
    return mean, var + obs_var + (NUGGET * scale["loss"]) ** 2, cov


def loss_curve_pointwise(params, data, kind, n_terms, b_ref, scale, working=None):
    """(pointwise log-likelihood, mean curve, marginal predictive sd) for one draw."""
    mean, var, cov = loss_curve_moments(params, data, kind, n_terms, b_ref, scale)
    if working is not None:
        var, cov = working["var"], working["cov"]
    ll = ar1_cov_logpdf(data["y"] - mean, var, cov, data["mask"])
    return ll, mean, jnp.sqrt(var)


def model_data(data: LossCurveData) -> dict:
    """The arrays the model reads (moments by field name)."""
    out = {f: jnp.asarray(getattr(data.moments, f)) for f in LossMoments._fields}
    return out | {"y": jnp.asarray(data.y), "mask": jnp.asarray(data.mask),
                  "batch_size": jnp.asarray(data.batch_size)}


def fit_loss_curve(runs, problem, noise, *, chains, warmup, samples, seed, progress,
                   priors=None, observation_noise=False, theta0=None):
    """NUTS on the loss-curve model; returns (InferenceData, LossCurveData)."""
    from numpyro.infer import init_to_value

    from ._fit import (loss_curve_idata, map_estimate, pointwise_over_draws, run_nuts,
                       sample_stats)

    data = prepare_loss_curve(runs, problem, noise, theta0,
                              minibatch_logs=observation_noise)
    jdata = model_data(data)
    kw = dict(kind=data.noise, n_terms=data.n_terms, b_ref=data.b_ref, scale=data.scale)
    guess = np.sqrt(data.scale["noise_guess"])
    init = {"s": 1.0} if noise == "minibatch" else {
        "sigma": guess if noise == "isotropic" else np.full(data.n_terms, guess)}
    if observation_noise:
        init["obs_sd"] = data.scale["jitter"]
    model_kw = dict(data=jdata, priors=priors, observation_noise=observation_noise, **kw)
    # pilot: the posterior mode under the full Gaussian surrogate fixes the working
    # covariance (see `_infer_ar`)
    pilot = map_estimate(loss_curve_model, model_kw, seed=seed,
                         init_strategy=init_to_value(values=init))
    pilot = {k: np.asarray(v) for k, v in pilot.items()}
    pilot.setdefault("obs_sd", np.zeros(()))
    _, var, cov = loss_curve_moments(pilot, jdata, **kw)
    working = {"var": var, "cov": cov}
    name = "s" if noise == "minibatch" else "sigma"
    mcmc = run_nuts(loss_curve_model, model_kw | {"working": working},
                    chains=chains, warmup=warmup, samples=samples, seed=seed,
                    progress=progress, init_strategy=init_to_value(
                        values={name: pilot[name]}))
    post = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    params = dict(post)
    params["obs_sd"] = np.zeros(next(iter(post.values())).shape[:2])
    ll, mean, sd = pointwise_over_draws(
        lambda p, d, w: loss_curve_pointwise(p, d, working=w, **kw), params, jdata,
        working)
    n_chain, n_draw = params["obs_sd"].shape[:2]
    shape = (n_chain, n_draw) + data.y.shape
    ll, mean, sd = (x.reshape(shape) for x in (ll, mean, sd))
    pred = ar1_draws(mean, np.broadcast_to(np.asarray(working["var"]), shape),
                     np.broadcast_to(np.asarray(working["cov"]), shape),
                     np.random.default_rng(seed))
    idata = loss_curve_idata(
        post, sample_stats(mcmc), ll, mean, pred, y=data.y, mask=data.mask, lr=data.lr,
        batch_size=data.batch_size, step=data.step, names=data.names,
        coords={"layer": np.arange(data.n_terms)},
        dims={"sigma": ["layer"] if noise == "layerwise" else []})
    idata.posterior.attrs["pilot_obs_sd"] = float(pilot["obs_sd"])
    return idata, data
