"""Second-order moment closure: quadratic Taylor expansion, Gaussian closure (DESIGN §3).

f_i(θc + δ) ≈ f_i + J_iᵀ δ + ½ δᵀ H_i δ with δ ~ N(m, C), a_i = J_i + H_i m and
r_i(m) the residual of the quadratic model at the mean. Isserlis / Stein give, exactly
for Gaussian δ,

    E ∇L   = (1/N) Σ_i [ (r_i + ½ tr(H_i C)) a_i + H_i C a_i ]
    E ∇²L  = (1/N) Σ_i [ a_i a_iᵀ + H_i C H_i + (r_i + ½ tr(H_i C)) H_i ]
    E f_i  = f_i(m) + ½ tr(H_i C)
    Cov(f_i, f_j) = a_iᵀ C a_j + ½ tr(H_i C H_j C)

and the moments move, over a step h, by

    m ← m − η φ(ηK_H, h) E∇L           (exponential Euler, K_H = E∇²L; "lyapunov": m − ηh E∇L)
    C ← e^{−ηhK} C e^{−ηhK} + η² ∫_0^h e^{−ηsK} E[D Dᵀ] e^{−ηsK} ds   (``"exponential"``)
    C ← (I − η h K) C (I − η h K)ᵀ + η² h E[D Dᵀ]                      (``"lyapunov"``)

Both are stable where explicit Euler on dC/dt blows up (η h λ_max > 1). The exponential
form is exact in continuous time for frozen K (it matches the SDE); the Lyapunov form is
the exact discrete recursion of Euler–Maruyama with step h for a linear model.

with K = E∇²L (``curvature="hessian"``), its PSD projection (``"psd"``: negative
eigenvalues clipped to 0) or the Gauss–Newton part (1/N) Σ a_i a_iᵀ + H_i C H_i
(``"gauss-newton"``). ``expand="initial"`` keeps J, H at θ0; ``expand="mean"``
re-expands the true network at the running mean θ0 + m every step (m = 0 locally).

Minibatch noise needs E Σ(δ); sdenet linearises the per-sample gradients in the output
residual only: E Σ ≈ (1/N) A (Π ∘ S) Aᵀ, A = [a_i], S_ij = r̃_i r̃_j + a_iᵀ C a_j,
r̃_i = r_i + ½ tr(H_i C) — exact for the linearised network, neglecting the H_i terms of
g_i = r_i ∇f_i. ``sampling="reshuffle"`` is refused.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._noise import Isotropic, Layerwise, Minibatch

MAX_PARAMS = 2000
CURVATURES = ("hessian", "psd", "gauss-newton")


class ClosureDomainWarning(UserWarning):
    """The second-order closure left the regime where it can be trusted."""


def _quadratic_model(problem, theta_c, m, x):
    """Outputs, a = J + H m and H at θc for the inputs x (quadratic model at offset m)."""
    f = problem.output(theta_c, x)
    j = problem.jacobian(theta_c, x)
    h = jax.hessian(lambda t: problem.output(t, x))(theta_c)  # (n, P, P)
    hm = h @ m
    return f + j @ m + 0.5 * hm @ m, j + hm, h


def _expectations(fq, a, h, c, y):
    """E∇L, E∇²L and its Gauss–Newton part over the training points."""
    n = y.shape[0]
    hc = h @ c  # (N, P, P)
    tr_hc = jnp.trace(hc, axis1=1, axis2=2)
    rt = fq - y + 0.5 * tr_hc
    hca = jnp.einsum("ipq,iq->ip", hc, a)
    grad = (a.T @ rt + jnp.sum(hca, axis=0)) / n
    gn = (a.T @ a + jnp.einsum("ipq,iqr->pr", hc, h)) / n
    hess = gn + jnp.einsum("i,ipq->pq", rt, h) / n
    return grad, hess, gn, rt


def _noise_cov(noise_kind, noise_param, a, rt, c):
    """E[D Dᵀ]: diag(d²) for additive noise (noise_param = d²), else the minibatch form
    (noise_param = s κ / B)."""
    if noise_kind == "additive":
        return jnp.diag(noise_param)
    n = a.shape[0]
    pi = jnp.eye(n, dtype=a.dtype) - 1.0 / n
    s = jnp.outer(rt, rt) + a @ c @ a.T
    return noise_param * (a.T @ (pi * s) @ a) / n


def _phi(x, t):
    """(1 − e^{−x t}) / x, continuous at x = 0."""
    small = jnp.abs(x * t) < 1e-8
    safe = jnp.where(small, 1.0, x)
    return jnp.where(small, t, -jnp.expm1(-safe * t) / safe)


def _psd(k):
    lam, v = jnp.linalg.eigh(0.5 * (k + k.T))
    return (v * jnp.clip(lam, 0.0, None)[None, :]) @ v.T


def second_order(problem, noise, lr, times, theta_e, *, expand="mean",
                 curvature="hessian", dt=1.0, integrator="exponential",
                 with_shift=True):
    """Integrate the Gaussian closure; returns (μ_z, V_z, extra variables, info)."""
    if expand not in ("initial", "mean"):
        raise ValueError(f"--expand must be 'initial' or 'mean', got {expand!r}.")
    if integrator not in ("exponential", "lyapunov"):
        raise ValueError(f"integrator must be 'exponential' or 'lyapunov', got "
                         f"{integrator!r}.")
    if curvature not in CURVATURES:
        raise ValueError(f"--curvature must be one of {CURVATURES}, got {curvature!r}.")
    if isinstance(noise, Minibatch) and noise.sampling != "iid":
        raise ValueError("the second-order closure supports Minibatch(sampling='iid') "
                         "only; simulate reshuffling with `sdenet simulate`.")
    p = problem.n_params
    if p > MAX_PARAMS:
        raise ValueError(
            f"the second-order closure keeps a dense P×P covariance; this problem has "
            f"P = {p} > {MAX_PARAMS}. Use --order 1, or a smaller --width."
        )
    save_every = float(times[1] - times[0]) if len(times) > 1 else 1.0
    n_inner = round(save_every / dt)
    if n_inner < 1 or abs(n_inner * dt - save_every) > 1e-9:
        raise ValueError(f"--dt {dt} must divide --save-every {save_every}.")
    dtype = theta_e.dtype
    if isinstance(noise, (Isotropic, Layerwise)):
        kind, param = "additive", jnp.asarray(noise.diagonal(problem), dtype) ** 2
    else:
        kind = "minibatch"
        param = jnp.asarray(noise.scale * noise.kappa(problem.n_train)
                            / noise.batch_size, dtype)
    options = _Options(expand, curvature, integrator, n_inner, len(times) - 1, kind)
    args = (problem, param, lr, jnp.asarray(dt, dtype), theta_e)
    mean, cov, tr, lo, hi, tr_c = _run(options, *args, jnp.asarray(1.0, dtype))
    n = problem.n_train
    extra = {
        "hessian_trace_mean": (("time",), tr),
        "curvature_min": (("time",), lo),
        "curvature_max": (("time",), hi),
        "weight_cov_trace": (("time",), tr_c),
    }
    if with_shift:
        mean0 = _run(options, *args, jnp.asarray(0.0, dtype))[0]
        shift = mean - mean0
        extra["train_output_shift"] = (("time", "train_point"), shift[:, :n])
        if problem.n_test:
            extra["test_output_shift"] = (("time", "test_point"), shift[:, n:])
    info = {"expand": expand, "curvature": curvature, "dt": dt, "integrator": integrator,
            "warnings": _domain_warnings(np.asarray(times), np.asarray(lo),
                                         np.asarray(hi), np.asarray(tr_c),
                                         np.asarray(mean))}
    for w in info["warnings"]:
        warnings.warn(w, ClosureDomainWarning, stacklevel=3)
    return mean, cov, extra, info


class _Options(NamedTuple):
    """The static (compile-time) choices of one closure run."""

    expand: str
    curvature: str
    integrator: str
    n_inner: int  # closure steps per save
    n_saves: int  # saves after t = 0
    noise_kind: str  # "additive" | "minibatch"


@eqx.filter_jit
def _run(options, problem, noise_param, lr, h_step, theta_e, noise_on):
    """The whole closure integration as one compiled function.

    Compiled once per (problem, options, shapes); σ, η, dt, θe and the noise switch are
    traced, so repeated calls (σ sweeps, the noise-free shift run) reuse it.
    """
    expand, curvature, integrator, n_inner, n_saves, noise_kind = options
    dtype = theta_e.dtype
    p = theta_e.shape[0]
    x_all = jnp.concatenate([problem.x_train, problem.x_test], axis=0)
    n = problem.n_train
    y = problem.y_train
    if expand == "initial":
        f_all0, j_all0, h_all0 = _quadratic_model(problem, theta_e,
                                                  jnp.zeros_like(theta_e), x_all)

    def model(theta_c, m, x_slice):
        if expand == "initial":
            f, j, h = f_all0[x_slice], j_all0[x_slice], h_all0[x_slice]
            hm = h @ m
            return f + j @ m + 0.5 * hm @ m, j + hm, h
        return _quadratic_model(problem, theta_c + m, jnp.zeros_like(m),
                                x_all[x_slice])

    train = slice(0, n)

    def step(state):
        theta_c, m, c = state
        fq, a, h = model(theta_c, m, train)
        grad, hess, gn, rt = _expectations(fq, a, h, c, y)
        k = {"hessian": hess, "psd": _psd(hess) if curvature == "psd" else hess,
             "gauss-newton": gn}[curvature]
        q = _noise_cov(noise_kind, noise_param, a, rt, c) * noise_on
        if integrator == "lyapunov":
            prop = jnp.eye(p, dtype=dtype) - lr * h_step * k
            c_new = prop @ c @ prop.T + lr**2 * h_step * q
            m_new = m - lr * h_step * grad
        else:
            lam, v = jnp.linalg.eigh(0.5 * (k + k.T))
            decay = jnp.exp(-lr * h_step * lam)
            ct = decay[:, None] * (v.T @ c @ v) * decay[None, :]
            ct = ct + lr**2 * (v.T @ q @ v) * _phi(lr * (lam[:, None] + lam[None, :]),
                                                   h_step)
            c_new = v @ ct @ v.T
            # exponential Euler for the mean: exact when E∇L is linear in m
            if curvature != "hessian":
                lam, v = jnp.linalg.eigh(0.5 * (hess + hess.T))
            m_new = m - lr * v @ (_phi(lr * lam, h_step) * (v.T @ grad))
        c_new = 0.5 * (c_new + c_new.T)
        if expand == "mean":
            theta_c, m_new = theta_c + m_new, jnp.zeros_like(m_new)
        return theta_c, m_new, c_new

    def curvature_stats(state):
        theta_c, m, c = state
        fq, a, h = model(theta_c, m, train)
        hess = _expectations(fq, a, h, c, y)[1]
        lam = jnp.linalg.eigvalsh(hess)
        return jnp.trace(hess), lam[0], lam[-1]

    def outputs(state):
        theta_c, m, c = state
        fq, a, h = model(theta_c, m, slice(0, x_all.shape[0]))
        hc = h @ c
        mean = fq + 0.5 * jnp.trace(hc, axis1=1, axis2=2)
        cov = a @ c @ a.T + 0.5 * jnp.einsum("ipq,jqp->ij", hc, hc)
        return mean, cov

    state0 = (theta_e, jnp.zeros_like(theta_e), jnp.zeros((p, p), dtype))

    def save_interval(state, _):
        state, _ = jax.lax.scan(lambda s, _: (step(s), None), state, None,
                                length=n_inner)
        mean, cov = outputs(state)
        return state, (mean, cov, *curvature_stats(state), jnp.trace(state[2]))

    mean0, cov0 = outputs(state0)
    _, out = jax.lax.scan(save_interval, state0, None, length=n_saves)
    first = (mean0, cov0, *curvature_stats(state0), jnp.zeros((), dtype))
    return [jnp.concatenate([f[None], o]) for f, o in zip(first, out)]


def _domain_warnings(times, lo, hi, tr_c, mean):
    out = []
    if not (np.all(np.isfinite(tr_c)) and np.all(np.isfinite(mean))):
        bad = times[np.argmax(~np.isfinite(tr_c) | ~np.isfinite(mean).all(axis=1))]
        out.append(f"the closure diverged (non-finite moments) by step {bad:g}")
        return out
    neg = -lo / np.maximum(np.abs(hi), 1e-300)
    if np.any(neg > 0.1):
        k = int(np.argmax(neg > 0.1))
        out.append(
            f"negative curvature dominates: λ_min(E∇²L) = {lo[k]:.3g} vs λ_max = "
            f"{hi[k]:.3g} at step {times[k]:g} (saddle/plateau region: the Gaussian "
            "closure is not reliable here)")
    if len(tr_c) > 4:
        late = tr_c[len(tr_c) // 2:]
        if late[-1] > 2.0 * late[0] > 0 and np.all(np.diff(late) > 0):
            out.append(
                f"the weight covariance keeps growing (tr C {late[0]:.3g} → "
                f"{late[-1]:.3g} over the second half): no stationary state")
    return out
