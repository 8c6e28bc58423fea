"""The trajectory family: weights logged at checkpoints of a known problem.

A path θ_{t_0}, …, θ_{t_K} of the SDE  dθ = −η ∇F(θ) dt + η D dW  (F = L + (λ/2)‖θ‖²,
D = diag(σ_i), time in SGD steps) is Markov, so its likelihood is a product of
transitions θ_{k+1} | θ_k over Δ_k = t_{k+1} − t_k. Two transition families:

- ``"em"`` (Euler–Maruyama pseudo-likelihood, dense checkpoints):

      θ_{k+1} | θ_k ~ N(θ_k − η ∇F(θ_k) Δ_k,  η² D² Δ_k)

  exact for Euler paths saved every solver step, O(Δ) wrong otherwise; NumPyro's
  ``EulerMaruyama`` distribution is its independent reference.

- ``"ou"`` (exact linear-Gaussian transitions, checkpoints far apart): with the loss
  quadratic, F = ½(θ−θ*)ᵀA(θ−θ*) + c (A = JᵀJ/N + λI, the Gauss–Newton matrix at θ_ref:
  the exact Hessian for problems linear in the weights), A = V diag(a) Vᵀ and z = Vᵀθ,

      E[z_{k+1} | θ_k] = Vᵀθ_k − η K(η a) ∘ Vᵀ∇F(θ_k)
      Cov[z_{k+1} | θ_k] = η² (Vᵀ D² V) ∘ Ψ,   Ψ_jl = K(η(a_j + a_l))

  with K(r) = ∫_0^Δ e^{−rs} ds = (1 − e^{−rΔ})/r (→ Δ as r → 0), i.e. the mean
  θ* + e^{−ηAΔ}(θ_k − θ*) written with the gradient at θ_k so that singular A needs no
  θ*. Passing ``dt=h`` gives instead the exact transitions of the Euler chain with step
  h over m = Δ/h steps (what ``simulate(dt=h)`` and SGD itself produce): K(r) =
  h Σ_{j<m} (1 − rh)^j, and in Ψ the rate r = η(a_j + a_l) − η² h a_j a_l, so that
  (1 − η h a_j)(1 − η h a_l) = 1 − rh. With m = 1 this is exactly the ``"em"``
  transition; as h → 0 it is the continuous OU process. For non-linear problems the
  ``"ou"`` family is the locally linearised (exponential-integrator) transition.

In the sampler σ only scales the covariance, so the residuals of every transition are
computed once (`prepare_trajectory`) and NUTS works on sufficient statistics.
Reference: Särkkä & Solin, *Applied Stochastic Differential Equations* (2019), §6.2
(linear SDE transitions) and §9 (Euler–Maruyama likelihoods).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import arviz as az
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array, Float
from numpyro.infer import init_to_value

from ._artefact import config_of
from ._fit import diagnostics, run_nuts, sample_stats, stamp, warn_on_diagnostics

TRAJECTORY_FAMILIES = ("em", "ou")
TRAJECTORY_NOISE = ("isotropic", "layerwise")
_LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------- checks
def _check_lr(lr) -> float:
    if callable(lr) or lr is None:
        raise ValueError(
            f"lr={lr!r}: the trajectory likelihoods need a constant learning rate "
            "(a float > 0); learning-rate schedules are not supported yet.")
    eta = float(lr)
    if not (np.isfinite(eta) and eta > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr}.")
    return eta


def _check_path(problem, weights, times):
    """Weights as (R, K+1, P), times as a float64 numpy (K+1,) vector, leading shape."""
    w = jnp.asarray(weights)
    if w.ndim < 2 or w.shape[-1] != problem.n_params:
        raise ValueError(
            f"weights must have shape (..., K+1, P) with P = {problem.n_params} (the "
            f"problem's flat weights), got {w.shape}.")
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or t.shape[0] != w.shape[-2]:
        raise ValueError(
            f"times must be a vector of the {w.shape[-2]} checkpoint times, got shape "
            f"{t.shape}.")
    if t.shape[0] < 2 or not np.all(np.diff(t) > 0):
        raise ValueError("times must hold at least 2 strictly increasing checkpoints.")
    lead = w.shape[:-2]
    return w.reshape((-1,) + w.shape[-2:]), t, lead


def _sigma_vector(sigma_diag, p, dtype):
    s = jnp.asarray(sigma_diag, dtype=dtype)
    if s.ndim == 0:
        s = jnp.full((p,), s, dtype=dtype)
    if s.shape != (p,):
        raise ValueError(
            f"sigma_diag must be a scalar or have shape ({p},), got {s.shape}.")
    return s


@eqx.filter_jit
def _batched_grad(problem, flat):
    return jax.vmap(problem.grad)(flat)


@eqx.filter_jit
def _jacobian(problem, theta):
    return problem.jacobian(theta, problem.x_train)


def _drift_gradients(problem, w, weight_decay):
    """∇F(θ_k) for every path and every checkpoint but the last: (R, K, P)."""
    start = w[:, :-1]
    g = _batched_grad(problem, start.reshape((-1, start.shape[-1]))).reshape(start.shape)
    return g + weight_decay * start if weight_decay else g


# ------------------------------------------------------------------ OU ingredients
def _geometric_sum(u, m):
    """S(u, m) = Σ_{j<m} (1 − u)^j = (1 − (1 − u)^m)/u, stable near u = 0 and for u ≥ 1."""
    small = u == 0
    safe = jnp.where(small, 0.5, u)
    stable = safe < 1.0
    u_below = jnp.where(stable, safe, 0.5)
    below = -jnp.expm1(m * jnp.log1p(-u_below)) / u_below  # 0 < 1 − u: monotone decay
    base = 1.0 - safe
    odd = jnp.mod(m, 2.0) == 1.0
    power = jnp.where((base < 0) & odd, -1.0, 1.0) * jnp.abs(base) ** m
    above = (1.0 - power) / safe  # u ≥ 1: the Euler chain oscillates
    out = jnp.where(stable, below, above)
    return jnp.where(small, m, out)


def _integrated_decay(rate, delta, dt):
    """K(r) = ∫_0^Δ e^{−rs} ds (dt=None) or h Σ_{j<m} (1 − rh)^j (dt=h, m = Δ/h).

    ``rate`` and ``delta`` broadcast together; r = 0 (flat directions) gives Δ."""
    if dt is None:
        x = rate * delta
        small = x == 0
        phi = jnp.where(small, 1.0, -jnp.expm1(-x) / jnp.where(small, 1.0, x))
        return delta * phi
    return dt * _geometric_sum(rate * dt, jnp.round(delta / dt))


@functools.partial(jax.jit, static_argnums=(3,))
def _ou_kernels(a_mat, d, eta, h):
    """Eigenpairs of A, the mean gains η K(η a) (U, P) and Ψ (U, P, P) per spacing."""
    eigvals, basis = jnp.linalg.eigh(a_mat)
    gain = eta * _integrated_decay(eta * eigvals[None, :], d[:, None], h)
    pair = eta * (eigvals[:, None] + eigvals[None, :])
    if h is not None:
        pair = pair - eta**2 * h * eigvals[:, None] * eigvals[None, :]
    psi = _integrated_decay(pair[None], d[:, None, None], h)
    return eigvals, basis, gain, psi


def _check_dt(dt, deltas):
    if dt is None:
        return None
    h = float(dt)
    if not (np.isfinite(h) and h > 0):
        raise ValueError(f"dt must be None (continuous time) or a number > 0, got {dt}.")
    m = deltas / h
    if not np.allclose(m, np.round(m), rtol=0, atol=1e-6) or np.any(np.round(m) < 1):
        raise ValueError(
            f"checkpoint spacings {np.unique(deltas)[:5]} are not multiples of dt={h}; "
            "pass the solver step the data were made with, or dt=None for the "
            "continuous-time OU transitions.")
    return h


def _curvature_matrix(problem, theta_ref, curvature, weight_decay):
    p = problem.n_params
    if curvature is None or (isinstance(curvature, str) and curvature == "gauss-newton"):
        jac = _jacobian(problem, theta_ref)
        a = jac.T @ jac / problem.n_train
    elif isinstance(curvature, str) and curvature == "hessian":
        a = eqx.filter_jit(lambda pr, t: jax.hessian(pr.loss)(t))(problem, theta_ref)
    elif isinstance(curvature, str):
        raise ValueError(f"curvature={curvature!r}: use None / 'gauss-newton', "
                         "'hessian' or a (P, P) matrix.")
    else:
        a = jnp.asarray(curvature, dtype=theta_ref.dtype)
        if a.shape != (p, p):
            raise ValueError(f"curvature must have shape ({p}, {p}), got {a.shape}.")
    a = 0.5 * (a + a.T)
    if weight_decay:
        a = a + weight_decay * jnp.eye(p, dtype=a.dtype)
    return a


@dataclass(frozen=True)
class _OUParts:
    eigvals: Array  # (P,)
    basis: Array  # (P, P) columns are eigenvectors V
    deltas: np.ndarray  # (U,) distinct spacings
    index: np.ndarray  # (K,) which spacing each transition has
    psi: Array  # (U, P, P) Ψ per distinct spacing
    z: Array  # (R, K, P) transition residuals in the eigenbasis


def _ou_parts(problem, eta, w, t, *, curvature, theta_ref, dt, weight_decay):
    deltas_all = np.diff(t)
    deltas, index = np.unique(np.round(deltas_all, 12), return_inverse=True)
    h = _check_dt(dt, deltas)
    theta_ref = jnp.mean(w[:, 0], axis=0) if theta_ref is None else \
        jnp.asarray(theta_ref, dtype=w.dtype)
    a_mat = _curvature_matrix(problem, theta_ref, curvature, weight_decay)
    eigvals, basis, gain, psi = _ou_kernels(a_mat, jnp.asarray(deltas, dtype=w.dtype),
                                            eta, h)
    grads = _drift_gradients(problem, w, weight_decay)
    step = w[:, 1:] - w[:, :-1]
    z = step @ basis + gain[index][None] * (grads @ basis)
    return _OUParts(eigvals, basis, deltas, index, psi, z)


def _gaussian_logpdf_chol(chol, x):
    """log N(x | 0, LLᵀ) for chol (K, P, P) and x (R, K, P) → (R, K)."""
    sol = jax.vmap(lambda xr: solve_triangular(chol, xr[..., None], lower=True)[..., 0])(x)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    return -0.5 * (x.shape[-1] * _LOG_2PI + logdet[None, :] + jnp.sum(sol**2, axis=-1))


# -------------------------------------------------------------- public log densities
def em_transition_logpdf(
    problem,
    lr: float,
    weights: Float[Array, "*paths K1 P"],
    times: Float[Array, " K1"],
    sigma_diag: Float[Array, " P"] | float,
    *,
    weight_decay: float = 0.0,
    pointwise: bool = False,
) -> Array:
    """Euler–Maruyama transition log-likelihood of weight paths.

    Σ_k log N(θ_{k+1} | θ_k − η ∇F(θ_k) Δ_k, η² D² Δ_k),  D = diag(sigma_diag),
    F = L + (λ/2)‖θ‖²; the initial point is conditioned on (not scored).

    **Arguments:**

    - `problem`: the `Problem` whose loss drives the drift.
    - `lr`: the constant learning rate η.
    - `weights`: flat weights at the checkpoints, shape (..., K+1, P).
    - `times`: checkpoint times in SGD steps, shape (K+1,), strictly increasing.
    - `sigma_diag`: the diagonal of D (shape (P,)) or one σ for all weights.
    - `weight_decay`: λ of the L2 penalty the run used.
    - `pointwise`: return the K per-transition terms instead of their sum.

    **Returns:** shape (...) (summed over transitions) or (..., K).
    """
    eta = _check_lr(lr)
    w, t, lead = _check_path(problem, weights, times)
    sig = _sigma_vector(sigma_diag, w.shape[-1], w.dtype)
    delta = jnp.asarray(np.diff(t), dtype=w.dtype)[None, :, None]
    grads = _drift_gradients(problem, w, weight_decay)
    resid = w[:, 1:] - w[:, :-1] + eta * delta * grads
    var = eta**2 * delta * sig[None, None, :] ** 2
    ll = jnp.sum(-0.5 * (_LOG_2PI + jnp.log(var) + resid**2 / var), axis=-1)
    ll = ll.reshape(lead + ll.shape[-1:])
    return ll if pointwise else jnp.sum(ll, axis=-1)


def ou_transition_logpdf(
    problem,
    lr: float,
    weights: Float[Array, "*paths K1 P"],
    times: Float[Array, " K1"],
    sigma_diag: Float[Array, " P"] | float,
    *,
    curvature=None,
    theta_ref=None,
    dt: float | None = None,
    weight_decay: float = 0.0,
    pointwise: bool = False,
) -> Array:
    """Exact linear-Gaussian (OU) transition log-likelihood of weight paths.

    Σ_k log N(θ_{k+1} | θ_k − V K(ηa) Vᵀ ∇F(θ_k) η,  η² V[(Vᵀ D² V) ∘ Ψ]Vᵀ) with
    A = V diag(a) Vᵀ (module docstring): exact for quadratic losses (problems linear in
    the weights), the locally linearised transition otherwise.

    **Arguments:** as `em_transition_logpdf`, plus

    - `curvature`: A: None / "gauss-newton" (JᵀJ/N at θ_ref), "hessian" (∇²L at θ_ref)
      or a (P, P) matrix; the weight decay λI is added to it.
    - `theta_ref`: linearisation point (default: the mean first checkpoint over paths).
    - `dt`: None for the continuous-time OU process; a step h for the exact transitions
      of the Euler chain with step h (checkpoint spacings must be multiples of h).

    **Returns:** shape (...) (summed over transitions) or (..., K).
    """
    eta = _check_lr(lr)
    w, t, lead = _check_path(problem, weights, times)
    sig = _sigma_vector(sigma_diag, w.shape[-1], w.dtype)
    parts = _ou_parts(problem, eta, w, t, curvature=curvature, theta_ref=theta_ref,
                      dt=dt, weight_decay=weight_decay)
    v = parts.basis
    noise = v.T @ (sig[:, None] ** 2 * v)  # Vᵀ D² V
    chol = jnp.linalg.cholesky(eta**2 * noise[None] * parts.psi)  # (U, P, P)
    ll = _gaussian_logpdf_chol(chol[parts.index], parts.z)
    ll = ll.reshape(lead + ll.shape[-1:])
    return ll if pointwise else jnp.sum(ll, axis=-1)


# --------------------------------------------------------------------- model data
@dataclass(frozen=True)
class TrajectoryData:
    """Transition residuals of R paths × K transitions, reduced for the sampler.

    ``stats`` holds arrays (see `prepare_trajectory`); ``scale["sigma"]`` a data-driven
    estimate of σ per noise group that centres the default prior and starts NUTS."""

    family: str
    noise: str
    lr: float
    dt: float | None
    groups: np.ndarray  # (P,) noise group of every weight
    times: np.ndarray  # (K+1,)
    stats: dict = field(repr=False)
    scale: dict = field(repr=False)

    @property
    def n_groups(self) -> int:
        return int(self.groups.max()) + 1

    @property
    def diagonal(self) -> bool:
        """True when the transition covariance is diagonal in the model's basis."""
        return self.family == "em" or self.n_groups == 1


def _groups(problem, noise):
    if noise not in TRAJECTORY_NOISE:
        raise ValueError(f"noise={noise!r}: choose one of {', '.join(TRAJECTORY_NOISE)}.")
    if noise == "isotropic":
        return np.zeros(problem.n_params, dtype=np.int64)
    return np.asarray(problem.layer_ids(), dtype=np.int64)


def prepare_trajectory(problem, lr, weights, times, *, family: str = "em",
                       noise: str = "isotropic", dt: float | None = None,
                       weight_decay: float = 0.0, curvature=None,
                       theta_ref=None) -> TrajectoryData:
    """Compute every transition residual once (σ-free) for `trajectory_model`.

    ``weights`` (R, K+1, P) or (K+1, P); ``times`` (K+1,). The statistics kept are

    - "em": ``ss`` (R, K, G) = Σ_{i∈g} r_i²/Δ_k, ``log_delta`` (K,), ``count`` (G,);
    - "ou", one noise group: ``quad`` (R, K) = Σ_j z_j²/Ψ_jj and
      ``logdet`` (K,) = Σ_j log Ψ_jj;
    - "ou", several groups: ``z`` (R, K, P), ``basis_cov`` (G, U, P, P) =
      (Vᵀ E_g V) ∘ Ψ_u, ``index`` (K,);

    plus ``obs_ss`` (R, K, G), the observed Σ_{i∈g} r_i²/Δ_k for predictive checks.
    """
    if family not in TRAJECTORY_FAMILIES:
        raise ValueError(f"family={family!r}: choose one of "
                         f"{', '.join(TRAJECTORY_FAMILIES)} (or 'auto' in fit_trajectory).")
    eta = _check_lr(lr)
    w, t, _ = _check_path(problem, weights, times)
    groups = _groups(problem, noise)
    n_groups = int(groups.max()) + 1
    onehot = np.eye(n_groups)[groups]  # (P, G)
    count = onehot.sum(axis=0)
    delta = np.diff(t)
    stats: dict = {"delta": delta, "onehot": onehot, "count": count}
    if family == "em":
        grads = _drift_gradients(problem, w, weight_decay)
        resid = np.asarray(w[:, 1:] - w[:, :-1] + eta * jnp.asarray(
            delta, dtype=w.dtype)[None, :, None] * grads, dtype=np.float64)
        ss = (resid**2 / delta[None, :, None]) @ onehot
        stats.update(ss=ss, log_delta=np.log(delta), obs_ss=ss)
        sigma_hat = np.sqrt(ss.sum(axis=(0, 1)) / (ss.shape[0] * ss.shape[1] * count)) / eta
        dt = None
    else:
        parts = _ou_parts(problem, eta, w, t, curvature=curvature, theta_ref=theta_ref,
                          dt=dt, weight_decay=weight_decay)
        dt = None if dt is None else float(dt)
        v = np.asarray(parts.basis, dtype=np.float64)
        psi = np.asarray(parts.psi, dtype=np.float64)
        z = np.asarray(parts.z, dtype=np.float64)
        index = np.asarray(parts.index)
        resid = z @ v.T
        obs_ss = (resid**2 / delta[None, :, None]) @ onehot
        psi_diag = np.diagonal(psi, axis1=-2, axis2=-1)[index]  # (K, P)
        stats.update(basis=v, psi_diag=psi_diag, index=index, obs_ss=obs_ss)
        if n_groups == 1:
            quad = np.sum(z**2 / psi_diag[None], axis=-1)
            stats.update(quad=quad, logdet=np.sum(np.log(psi_diag), axis=-1))
            sigma_hat = np.sqrt(np.array([quad.mean() / v.shape[0]])) / eta
        else:
            proj = np.einsum("pj,pg,pl->gjl", v, onehot, v)  # Vᵀ E_g V
            stats.update(z=z, basis_cov=proj[:, None] * psi[None])
            # moment estimate: weight variance under unit isotropic noise, per group
            unit_var = eta**2 * (psi_diag @ (v.T**2))  # (K, P)
            sigma_hat = np.sqrt(np.sum(resid**2, axis=(0, 1)) @ onehot
                                / (w.shape[0] * unit_var.sum(axis=0) @ onehot))
    sigma_hat = np.maximum(np.nan_to_num(sigma_hat, nan=1e-12), 1e-12)
    return TrajectoryData(family, noise, eta, dt, groups, t, stats,
                          {"sigma": sigma_hat})


def trajectory_pointwise(sigma, data: TrajectoryData, stats: dict | None = None):
    """Per-transition log-likelihood (R, K) at noise σ (one per group, shape (G,))."""
    s = data.stats if stats is None else stats
    return _pointwise(sigma, s, data.lr, data.family, data.diagonal)


def _pointwise(sigma, s, eta, family, diagonal):
    log_var = 2.0 * (jnp.log(eta) + jnp.log(sigma))  # (G,)
    inv_var = 1.0 / (eta**2 * sigma**2)
    if family == "em":
        count = s["count"]
        const = jnp.sum(count * (_LOG_2PI + log_var)) + jnp.sum(count) * s["log_delta"]
        return -0.5 * (const[None, :] + jnp.sum(s["ss"] * inv_var[None, None, :], axis=-1))
    p = s["basis"].shape[0]
    if diagonal:
        return -0.5 * (p * (_LOG_2PI + log_var[0]) + s["logdet"][None, :]
                       + s["quad"] * inv_var[0])
    cov = eta**2 * jnp.einsum("g,guij->uij", sigma**2, s["basis_cov"])
    chol = jnp.linalg.cholesky(cov)
    return _gaussian_logpdf_chol(chol[s["index"]], s["z"])


# compiled once per (family, shapes): repeated fits (calibration studies) reuse it
_pointwise_draws = jax.jit(jax.vmap(_pointwise, in_axes=(0, None, None, None, None)),
                           static_argnums=(3, 4))


def _loglik_draws(sigma, data: TrajectoryData, chunk: int = 256):
    """Pointwise log-likelihood (n, R, K) for n draws of σ (n, G), in padded chunks."""
    n = sigma.shape[0]
    size = min(chunk, n)
    stats = {k: v for k, v in data.stats.items() if k not in ("onehot", "obs_ss")}
    out = []
    for start in range(0, n, size):
        block = sigma[start:start + size]
        pad = size - block.shape[0]
        if pad:
            block = np.concatenate([block, np.repeat(block[-1:], pad, axis=0)])
        ll = _pointwise_draws(jnp.asarray(block), stats, data.lr, data.family,
                              data.diagonal)
        out.append(np.asarray(ll)[:size - pad])
    return np.concatenate(out, axis=0)


def trajectory_model(data, *, problem=None, lr=None, family: str = "em",
                     noise: str = "isotropic", priors: dict | None = None, dt=None,
                     weight_decay: float = 0.0):
    """NumPyro model of the trajectory family.

    ``data``: a `TrajectoryData` (from `prepare_trajectory`, the fast way) or a dict
    ``{"weights": (R, K+1, P), "times": (K+1,)}`` (then ``problem`` and ``lr`` are
    needed and the residuals are computed inside the model).

    Sites: ``sigma`` ~ LogNormal(log σ̂, 1.5) (scalar for isotropic noise, one per layer
    of ``problem.layer_ids()`` for layerwise), σ̂ the data-driven scale of
    `prepare_trajectory` (root-mean-square transition residual / (η √Δ) for "em", the
    isotropic maximum-likelihood σ for "ou"); override with ``priors={"sigma": d}``.
    The likelihood, summed over paths and transitions, enters as the factor ``loglik``.
    """
    if not isinstance(data, TrajectoryData):
        if problem is None or lr is None:
            raise ValueError("trajectory_model needs problem= and lr= when data is a "
                             "dict of weights and times; or pass prepare_trajectory(...).")
        data = prepare_trajectory(problem, lr, data["weights"], data["times"],
                                  family=family, noise=noise, dt=dt,
                                  weight_decay=weight_decay)
    priors = priors or {}
    g = data.n_groups
    hat = jnp.asarray(data.scale["sigma"])
    if data.noise == "isotropic":
        prior = priors.get("sigma", dist.LogNormal(jnp.log(hat[0]), 1.5))
        sigma = numpyro.sample("sigma", prior)
        sig_vec = jnp.reshape(sigma, (1,))
    else:
        prior = priors.get("sigma", dist.LogNormal(jnp.log(hat), 1.5).to_event(1))
        if prior.event_shape == () and prior.batch_shape == ():
            prior = prior.expand([g]).to_event(1)
        elif prior.event_shape == ():
            prior = prior.to_event(1)
        sigma = numpyro.sample("sigma", prior)
        sig_vec = sigma
    stats = {k: jnp.asarray(v) for k, v in data.stats.items()}
    numpyro.factor("loglik", jnp.sum(trajectory_pointwise(sig_vec, data, stats)))


# ----------------------------------------------------------- posterior predictive
def _predict_ss(sigma, data: TrajectoryData, rng, max_elements: int = 2**22):
    """Replicated Σ_{i∈g} r_i²/Δ_k, (n, R, K, G), one per draw of σ (n, G) (numpy)."""
    st = data.stats
    eta = data.lr
    n = sigma.shape[0]
    r, k, g = st["obs_ss"].shape
    if data.family == "em":
        chi2 = rng.chisquare(np.broadcast_to(st["count"], (n, r, k, g)))
        return eta**2 * sigma[:, None, None, :] ** 2 * chi2
    v, p = st["basis"], st["basis"].shape[0]
    step = max(1, max_elements // (r * k * p))
    out = []
    for start in range(0, n, step):
        sig = sigma[start:start + step]
        eps = rng.standard_normal((sig.shape[0], r, k, p))
        if data.diagonal:
            sd = np.sqrt(st["psi_diag"])[None, None]
            z = eta * sig[:, 0, None, None, None] * sd * eps
        else:
            cov = eta**2 * np.einsum("ng,guij->nuij", sig**2, st["basis_cov"])
            chol = np.linalg.cholesky(cov)[:, st["index"]]  # (n, K, P, P)
            z = np.einsum("nkij,nrkj->nrki", chol, eps)
        resid = z @ v.T
        out.append((resid**2 / st["delta"][None, None, :, None]) @ st["onehot"])
    return np.concatenate(out, axis=0)


# ------------------------------------------------------------------------- fitting
def is_linear_in_weights(problem, *, rtol: float = 1e-6) -> bool:
    """True when the network output is linear (affine) in θ: J(θ) does not vary."""
    theta0 = problem.theta0
    shift = jax.random.normal(jax.random.key(0), theta0.shape, theta0.dtype)
    j0 = _jacobian(problem, theta0)
    j1 = _jacobian(problem, theta0 + shift)
    scale = float(jnp.max(jnp.abs(j0))) + 1e-30
    tol = max(rtol, 100 * float(jnp.finfo(theta0.dtype).eps))
    return float(jnp.max(jnp.abs(j1 - j0))) <= tol * scale


def _auto_dt(config: dict):
    kind = config.get("kind")
    if kind == "sgd":
        return 1.0
    if kind == "sde" and config.get("solver", "euler") == "euler":
        return float(config.get("dt", 1.0))
    return None


def fit_trajectory(ds, problem, lr: float | None = None, *, family: str = "auto",
                   noise: str = "isotropic", dt="auto", weight_decay: float | None = None,
                   chains: int = 4, warmup: int = 500, samples: int = 500, seed: int = 0,
                   priors: dict | None = None, progress: bool = False):
    """Infer the noise σ (or σ_l per layer) from logged weight trajectories with NUTS.

    **Arguments:**

    - `ds`: an artefact of `simulate` / `sgd` with `weights` (dims path, time, weight),
      i.e. recorded with ``Observables(weights=True)``.
    - `problem`: the `Problem` the paths were trained on.
    - `lr`: the constant learning rate η (default: the one recorded in ``ds``).
    - `family`: "em", "ou", or "auto": "ou" when the problem is linear in the weights
      and checkpoints are more than one step apart, else "em".
    - `noise`: "isotropic" (σ) or "layerwise" (σ_l per ``problem.layer_ids()`` group).
    - `dt`: for "ou": the Euler step of the data (exact discrete transitions) or None
      (continuous OU); "auto" reads it from ``ds`` (sde with the Euler solver: its dt;
      sgd: 1; otherwise None).
    - `weight_decay`: λ of the run (default: recorded in ``ds``, else 0).
    - `chains`, `warmup`, `samples`, `seed`, `progress`: NUTS settings.
    - `priors`: ``{"sigma": distribution}`` to replace the default prior.

    **Returns:** ArviZ InferenceData: posterior ``sigma``; sample_stats (``diverging``
    …); log_likelihood ``transition`` (chain, draw, path, transition);
    posterior_predictive and observed_data ``residual_ss`` (Σ over each noise group of
    the squared transition residual / Δ); observed_data ``weights``; constant_data
    ``time``. Configuration, diagnostics and versions are stamped in the attrs; warns
    (`FitDiagnosticWarning`) on r_hat > 1.01, bulk ESS < 100 or divergences.

    **Raises:** `ValueError` when ``ds`` has no weights, the sizes do not match the
    problem, or the run used features the likelihood does not model.
    """
    if "weights" not in getattr(ds, "data_vars", {}):
        raise ValueError("the dataset has no 'weights' variable: record the trajectory "
                         "with observables=Observables(weights=True) (and without "
                         "stats_only).")
    if chains < 1 or warmup < 1 or samples < 1:
        raise ValueError("chains, warmup and samples must be ≥ 1.")
    config = config_of(ds) if hasattr(ds, "attrs") else {}
    if config.get("sme_correction"):
        raise ValueError("the run used the SME drift correction, which the trajectory "
                         "likelihood does not model; simulate without sme_correction.")
    if lr is None:
        lr_cfg = config.get("lr", {})
        if lr_cfg.get("schedule") != "constant":
            raise ValueError("lr=None: the dataset records no constant learning rate; "
                             "pass lr=.")
        lr = lr_cfg["lr"]
    eta = _check_lr(lr)
    if weight_decay is None:
        weight_decay = float(config.get("weight_decay", 0.0))
    weights = ds["weights"].transpose("path", "time", "weight").values
    times = ds["time"].values.astype(np.float64)
    if weights.shape[-1] != problem.n_params:
        raise ValueError(f"the dataset has {weights.shape[-1]} weights but the problem "
                         f"{problem.name!r} has {problem.n_params}; pass the problem "
                         "the run was made with.")
    if not np.all(np.isfinite(weights)):
        raise ValueError("the weights contain non-finite values (a diverged run?).")
    spacing = float(np.max(np.diff(times))) if len(times) > 1 else 0.0
    linear = is_linear_in_weights(problem)
    if family == "auto":
        family = "ou" if linear and spacing > 1.0 + 1e-9 else "em"
    if dt == "auto":
        dt = _auto_dt(config) if family == "ou" else None
        if dt is not None and not np.allclose(np.diff(times) / dt,
                                              np.round(np.diff(times) / dt)):
            dt = None
    data = prepare_trajectory(problem, eta, jnp.asarray(weights), times, family=family,
                              noise=noise, dt=dt, weight_decay=weight_decay)
    hat = data.scale["sigma"]
    init = {"sigma": float(hat[0]) if noise == "isotropic" else jnp.asarray(hat)}
    mcmc = run_nuts(trajectory_model, {"data": data, "priors": priors}, chains=chains,
                    warmup=warmup, samples=samples, seed=seed, progress=progress,
                    init_strategy=init_to_value(values=init))
    post = mcmc.get_samples(group_by_chain=True)
    sig = np.asarray(post["sigma"])
    sig_vec = sig[..., None] if noise == "isotropic" else sig
    n_chain, n_draw = sig.shape[:2]
    flat = sig_vec.reshape((n_chain * n_draw, -1))
    ll = _loglik_draws(flat, data)
    pred = _predict_ss(flat, data, np.random.default_rng(seed))
    r, k = data.stats["obs_ss"].shape[:2]
    ll = ll.reshape(n_chain, n_draw, r, k)
    pred = pred.reshape(n_chain, n_draw, r, k, -1)
    obs = data.stats["obs_ss"]
    if noise == "isotropic":
        pred, obs = pred[..., 0], obs[..., 0]
        ss_dims = ["path", "transition"]
    else:
        ss_dims = ["path", "transition", "layer"]
    stats_out = sample_stats(mcmc)
    coords = {"path": ds["path"].values, "transition": times[1:], "time": times,
              "weight": np.arange(weights.shape[-1]), "layer": np.arange(data.n_groups)}
    dims = {"sigma": [] if noise == "isotropic" else ["layer"],
            "residual_ss": ss_dims, "delta": ["transition"],
            "weights": ["path", "time", "weight"]}
    idata = az.from_dict(
        posterior={"sigma": sig},
        sample_stats=stats_out,
        posterior_predictive={"residual_ss": pred},
        observed_data={"residual_ss": obs, "weights": weights},
        constant_data={"delta": np.diff(times)},
        coords=coords,
        dims=dims,
    )
    # one pointwise term per transition: the log density of θ_{k+1} given θ_k
    idata.add_groups(log_likelihood={"weights": ll}, coords=coords,
                     dims={"weights": ["path", "transition"]})
    config_out = {
        "family": "trajectory", "likelihood": family, "noise": noise, "lr": eta,
        "dt": data.dt, "weight_decay": weight_decay, "chains": chains, "warmup": warmup,
        "samples": samples, "seed": seed, "paths": int(r), "transitions": int(k),
        "linear_in_weights": bool(linear), "sigma_scale": [float(x) for x in hat],
        "problem": problem.config, "data_config": config,
        "priors": {k: repr(v) for k, v in (priors or {}).items()},
    }
    diag = diagnostics(idata, ["sigma"])
    config_out["diagnostics"] = diag
    config_out["diagnostic_warnings"] = warn_on_diagnostics(diag)
    return stamp(idata, config_out)


__all__ = ["em_transition_logpdf", "ou_transition_logpdf", "prepare_trajectory",
           "trajectory_model", "trajectory_pointwise", "fit_trajectory",
           "is_linear_in_weights", "TrajectoryData"]
