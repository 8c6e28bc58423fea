"""The scaling family: training logs alone, an Ornstein–Uhlenbeck spectrum of the loss.

Run r (learning rate η_r, batch size B_r) logs its loss at steps t. With K modes of rate
κ_j (= 2λ_j, shared by all runs), initial excess A_j and floor share w_j (Σ w_j = 1):

    E L_r(t)  = L* + Σ_j [ A_j e^{−η_r κ_j t} + F_r w_j (1 − e^{−η_r κ_j t}) ]
    F_r       = F0 (η_r/η_ref)^α (B_r/B_ref)^(−β)

which is exact for squared OU modes x_j (loss ½λ_j x_j², noise floor F_rj = ½λ_j v_j∞).
The fluctuation of mode j has two parts: 2 F_rj(t)² (quadratic in the OU deviation,
one-step correlation e^{−η_r κ_j Δt}) and 4 A_j(t) F_rj(t) (linear in it, correlation
e^{−η_r κ_j Δt/2}), with A_j(t) = A_j e^{−η κ t}, F_rj(t) = F_rj (1 − e^{−η κ t}); logged minibatch losses add independent noise of variance
σ_obs² (B_r/B_ref)^(−1) (switch it off, ``observation_noise=False``, for full-batch
loss logs: an unidentifiable σ_obs ≈ 0 otherwise stalls the chains). The likelihood is the moment-matched AR(1) of `_infer_ar`.
The linear scaling rule is α = β = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions.transforms import OrderedTransform

from ._infer_ar import ar1_cov_logpdf, component_moments
from ._logs import LogError

NUGGET = 0.05


@dataclass(frozen=True)
class ScalingData:
    """Runs padded to a common length (mask marks real points)."""

    t: np.ndarray  # (R, T) steps
    y: np.ndarray  # (R, T) logged loss
    mask: np.ndarray  # (R, T)
    lr: np.ndarray  # (R,)
    batch_size: np.ndarray  # (R,)
    names: tuple
    eta_ref: float
    b_ref: float
    scale: dict  # data scales for the priors

    def to_jax(self):
        return {k: jnp.asarray(getattr(self, k)) for k in ("t", "y", "mask", "lr",
                                                             "batch_size")}


def prepare_scaling(runs, *, plateau_check=True) -> ScalingData:
    """Validate runs for the scaling model and pad them (raises LogError)."""
    missing = [r.name for r in runs if r.lr is None or r.batch_size is None]
    if missing:
        raise LogError(
            f"the scaling model needs lr and batch_size for every run; missing for "
            f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}: add lr and "
            "batch_size columns, a sidecar, or --lr/--batch-size.")
    configs = {(r.lr, r.batch_size) for r in runs}
    if len(configs) < 2:
        raise LogError(
            f"all {len(runs)} runs share one configuration (lr={runs[0].lr}, "
            f"batch_size={runs[0].batch_size}): the scaling exponents α, β need runs at "
            "two or more learning rates or batch sizes.")
    for r in runs:
        if r.lr <= 0 or r.batch_size <= 0:
            raise LogError(f"{r.source}: run {r.name!r} has lr={r.lr}, batch_size="
                           f"{r.batch_size}; both must be > 0.")
    if plateau_check:
        still = [r.name for r in runs if not _plateaued(r.loss)]
        if len(still) == len(runs):
            raise LogError(
                "no run has reached its noise floor (the loss still falls over the last "
                "half of every run); log longer runs so the floor is identifiable.")
    length = max(len(r.step) for r in runs)
    n = len(runs)
    t = np.zeros((n, length))
    y = np.zeros((n, length))
    mask = np.zeros((n, length), bool)
    for k, r in enumerate(runs):
        m = len(r.step)
        t[k, :m], y[k, :m], mask[k, :m] = r.step, r.loss, True
        if m < length:  # harmless padding: later steps, the last value
            t[k, m:] = r.step[-1] + np.arange(1, length - m + 1)
            y[k, m:] = r.loss[-1]
    lr = np.array([r.lr for r in runs], float)
    bs = np.array([r.batch_size for r in runs], float)
    tail = [r.loss[len(r.loss) * 3 // 4:] for r in runs]
    y_min = float(min(np.min(r.loss) for r in runs))
    floor_guess = float(np.median([np.mean(s) for s in tail]) - y_min)
    jitter = float(np.median([np.std(np.diff(s)) for s in tail])) / np.sqrt(2)
    scale = {
        "y_min": y_min,
        "y0": float(np.median([r.loss[0] for r in runs])),
        "floor": max(floor_guess, 1e-6 * abs(y_min) + 1e-12, jitter),
        "t_max": float(max(r.step[-1] for r in runs)),
        "jitter": max(jitter, 1e-9 * (abs(y_min) + 1e-12)),
    }
    return ScalingData(t, y, mask, lr, bs, tuple(r.name for r in runs),
                       float(np.exp(np.mean(np.log(lr)))),
                       float(np.exp(np.mean(np.log(bs)))), scale)


def _plateaued(loss):
    n = len(loss)
    if n < 8:
        return False
    drop = loss[0] - np.mean(loss[-n // 4:])
    late = np.mean(loss[n // 2: 3 * n // 4]) - np.mean(loss[-n // 4:])
    return drop <= 0 or late < 0.1 * drop


def scaling_model(data: dict, *, modes: int, eta_ref: float, b_ref: float, scale: dict,
                  priors: dict | None = None, observation_noise: bool = True,
                  working: dict | None = None):
    """NumPyro model of the scaling family (see module docstring).

    ``working``: {"var", "cov"} (R, T) — a fixed working covariance (see `_infer_ar`);
    then σ_obs only enters through it and is not sampled.
    """
    priors = priors or {}
    k = modes
    t, y, mask = data["t"], data["y"], data["mask"]
    lr, bs = data["lr"], data["batch_size"]
    l_star = numpyro.sample("L_star", priors.get(
        "L_star", dist.Normal(scale["y_min"], 5.0 * scale["floor"])))
    rate_center = np.log(3.0 / (eta_ref * scale["t_max"]))
    log_rate = numpyro.sample("log_rate", priors.get("log_rate", dist.TransformedDistribution(
        dist.Normal(rate_center + 2.0, 2.5).expand([k]).to_event(1), OrderedTransform())))
    excess0 = max(scale["y0"] - scale["y_min"], scale["floor"])
    a_total = numpyro.sample("A_total", priors.get(
        "A_total", dist.LogNormal(np.log(excess0), 1.0)))
    a_share = numpyro.sample("A_share", dist.Dirichlet(jnp.ones(k))) if k > 1 else \
        jnp.ones(1)
    w_share = numpyro.sample("floor_share", dist.Dirichlet(jnp.ones(k))) if k > 1 else \
        jnp.ones(1)
    log_f0 = numpyro.sample("log_F0", priors.get(
        "log_F0", dist.Normal(np.log(scale["floor"]), 2.0)))
    alpha = numpyro.sample("alpha", priors.get("alpha", dist.Normal(1.0, 1.0)))
    beta = numpyro.sample("beta", priors.get("beta", dist.Normal(1.0, 1.0)))
    if observation_noise and working is None:
        obs_sd = numpyro.sample("obs_sd", priors.get(
            "obs_sd", dist.HalfNormal(3.0 * scale["jitter"])))
    else:
        obs_sd = jnp.zeros(())
    numpyro.deterministic("F0", jnp.exp(log_f0))
    numpyro.deterministic("rate", jnp.exp(log_rate))

    params = {"L_star": l_star, "log_rate": log_rate, "A_total": a_total,
              "A_share": a_share, "floor_share": w_share, "log_F0": log_f0,
              "alpha": alpha, "beta": beta, "obs_sd": obs_sd}
    ll = scaling_pointwise(params, data, eta_ref, b_ref, scale, working)[0]
    numpyro.factor("loglik", jnp.sum(ll))


def scaling_curves(params, data, eta_ref, b_ref, scale):
    """Mean curve, mode variances, one-step correlations and observation variance."""
    t, lr, bs = data["t"], data["lr"], data["batch_size"]
    floor = jnp.exp(params["log_F0"] + params["alpha"] * jnp.log(lr / eta_ref)
                    - params["beta"] * jnp.log(bs / b_ref))
    rates = jnp.exp(params["log_rate"])
    decay = jnp.exp(-(lr[:, None, None] * rates[None, None, :]) * t[:, :, None])  # R,T,K
    a_t = params["A_total"] * params["A_share"][None, None, :] * decay
    f_t = floor[:, None, None] * params["floor_share"][None, None, :] * (1.0 - decay)
    mean = params["L_star"] + jnp.sum(a_t + f_t, axis=-1)
    # each mode's fluctuation has a part quadratic in the OU deviation (variance 2F²,
    # correlation e^{−ηκΔt}) and a part linear in it (variance 4AF, correlation
    # e^{−ηκΔt/2}: the OU deviation itself decays at half the loss rate)
    mode_var = jnp.concatenate([2.0 * f_t**2, 4.0 * a_t * f_t], axis=-1)
    dt = jnp.diff(t, axis=1, prepend=t[:, :1])
    rho = jnp.exp(-(lr[:, None, None] * rates[None, None, :]) * dt[:, :, None])
    rho = jnp.concatenate([rho, jnp.sqrt(rho)], axis=-1)
    # a nugget of 5% of the typical floor keeps deterministic points (t = 0: every run
    # starts from the same loss) from pinning L* + ΣA to machine precision
    obs_var = (params["obs_sd"] ** 2 * (bs / b_ref) ** -1.0)[:, None] + (
        NUGGET * scale["floor"]) ** 2
    return mean, mode_var, rho, obs_var


def scaling_pointwise(params, data, eta_ref, b_ref, scale, working=None):
    """(pointwise log-likelihood, mean curve, marginal predictive sd) for one draw."""
    mean, mode_var, rho, obs_var = scaling_curves(params, data, eta_ref, b_ref, scale)
    var, cov = component_moments(mode_var, rho, obs_var)
    if working is not None:
        var, cov = working["var"], working["cov"]
    ll = ar1_cov_logpdf(data["y"] - mean, var, cov, data["mask"])
    return ll, mean, jnp.sqrt(var)


def scaling_working(params, data, eta_ref, b_ref, scale):
    """The working covariance {"var", "cov"} at one parameter point (the pilot)."""
    mean, mode_var, rho, obs_var = scaling_curves(params, data, eta_ref, b_ref, scale)
    var, cov = component_moments(mode_var, rho, obs_var)
    return {"var": var, "cov": cov}


def scaling_init(data: ScalingData, modes: int) -> dict:
    """A data-driven starting point for NUTS (the prior medians are far from it)."""
    s = data.scale
    center = np.log(3.0 / (data.eta_ref * s["t_max"])) + 2.0
    return {
        "L_star": s["y_min"],
        "log_rate": jnp.asarray(center + np.linspace(-1.0, 1.0, modes) * (modes > 1)),
        "A_total": max(s["y0"] - s["y_min"], s["floor"]),
        "log_F0": np.log(s["floor"]),
        "alpha": 1.0,
        "beta": 1.0,
        "obs_sd": s["jitter"],  # ignored when the model has no observation noise
        **({"A_share": jnp.ones(modes) / modes, "floor_share": jnp.ones(modes) / modes}
           if modes > 1 else {}),
    }
