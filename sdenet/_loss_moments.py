"""Moments of the logged train loss of a linearised network, polynomial in the noise.

The loss-curve family (DESIGN §4) needs E L(t), Var L(t) and Cov(L(t_k), L(t_{k−1})) at
the log steps of each run, as cheap functions of the noise parameters. Around θ0 the
train residuals are u = u0 + J δ (N points, G = JᵀJ/N, b = Jᵀu0/N), and SGD with step
η is the chain (exact for a network linear in its weights)

    δ_{t+1} = F δ_t − η b + η ξ_t,   F = I − η G,   Cov ξ_t = D D ᵀ,

whose mean m_t (gradient descent) does not depend on the noise and whose covariance
is linear in a basis of noise terms, C_t = Σ_j c_j C_{j,t}:

- additive noise (`Isotropic`, `Layerwise`): c_l = σ_l², C_{l,t+1} = F C_{l,t} F + η² E_l
  (E_l the indicator of layer l's weights);
- iid minibatches (`Minibatch`, scale s): Cov ξ = (s κ/B) E Σ(δ), and E Σ is affine in
  C, E Σ = Σ0(m) + Σ1(C) with Σ0 = (1/N) Jᵀ diag(μ_u²) J − v vᵀ,
  Σ1(C) = (1/N) Σ_i (J_i C J_iᵀ) J_iᵀ J_i − G C G. The feedback of C into the noise is
  expanded in powers of s: C = Σ_{k=1}^{K} s^k C_k with
  C_{1,t+1} = F C_1 F + η²(κ/B) Σ0(m_t),  C_{k,t+1} = F C_k F + η²(κ/B) Σ1(C_{k−1,t});
  each order is smaller by about s η κ λ_max/(2B) (K = 3 terms are kept).

With Gaussian residuals (exact for additive noise; a moment closure for minibatches)
and L = ‖u‖²/(2N), μ_u = u0 + J m, v = Jᵀμ_u/N (the mean gradient), M = F^Δ:

    E L_k            = ‖μ_u‖²/(2N) + ½ tr(G C_k)
    Var L_k          = ½ tr(G C_k G C_k) + v_kᵀ C_k v_k
    Cov(L_k, L_{k−1}) = ½ tr(G M C_{k−1} G C_{k−1} Mᵀ) + v_kᵀ M C_{k−1} v_{k−1}.

Everything runs in the eigenbasis of G, where F and M are diagonal.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._noise import Isotropic, Layerwise, Minibatch

MINIBATCH_ORDERS = 3


class LossMoments(NamedTuple):
    """Coefficients of the loss moments at T log steps for J noise terms c_j.

    E L = mean0 + Σ_j c_j mean1[j];  Var L = Σ_jl c_j c_l var2[j, l] + Σ_j c_j var1[j];
    Cov(L_k, L_{k−1}) = Σ_jl c_j c_l cov2[j, l] + Σ_j c_j cov1[j]  (0 at k = 0).
    """

    mean0: jax.Array  # (T,)
    mean1: jax.Array  # (J, T)
    var2: jax.Array  # (J, J, T)
    var1: jax.Array  # (J, T)
    cov2: jax.Array  # (J, J, T)
    cov1: jax.Array  # (J, T)


def noise_terms(problem, noise):
    """(kind, basis) for a noise model: the per-weight indicator of every σ² term."""
    if isinstance(noise, Isotropic):
        return "additive", np.ones((1, problem.n_params))
    if isinstance(noise, Layerwise):
        ids = np.asarray(problem.layer_ids())
        return "additive", np.stack([ids == l for l in range(problem.n_layers)]) * 1.0
    if isinstance(noise, Minibatch):
        if noise.sampling != "iid":
            raise ValueError("the loss-curve family models iid minibatches only (the "
                             "closure has no model of reshuffling's memory); use the "
                             "scaling family for reshuffled runs.")
        return "minibatch", np.zeros((MINIBATCH_ORDERS, problem.n_params))
    raise ValueError(f"unknown noise model {noise!r}")


@eqx.filter_jit
def loss_moments(problem, theta0, lr, steps, kind, basis, kappa_over_b):
    """`LossMoments` of one run at integer log ``steps`` (non-decreasing, ≥ 0).

    ``kind``: "additive" (``basis`` (J, P) per-weight noise indicators) or
    "minibatch" (J = ``basis.shape[0]`` powers of s; ``kappa_over_b`` = κ/B).
    """
    n = problem.n_train
    jac = problem.jacobian(theta0, problem.x_train)
    u0 = problem.train_output(theta0) - problem.y_train
    a, w = jnp.linalg.eigh(jac.T @ jac / n)
    a = jnp.clip(a, 0.0, None)
    jt = jac @ w  # J in the eigenbasis
    b = jt.T @ u0 / n
    f = 1.0 - lr * a
    n_terms = basis.shape[0]
    if kind == "additive":
        sources = lr**2 * jnp.einsum("jp,pa,pb->jab", basis, w, w)
    p = a.shape[0]

    def residual_mean(m):
        mu = u0 + jt @ m
        return mu, jt.T @ mu / n

    def one_step(state, _):
        m, cs = state
        mu, v = residual_mean(m)
        if kind == "additive":
            src = sources
        else:
            sigma0 = (jt.T * mu[None, :] ** 2) @ jt / n - jnp.outer(v, v)
            quad = jnp.einsum("ip,jpq,iq->ji", jt, cs[:-1], jt)  # J_i C_k J_iᵀ
            sigma1 = (jnp.einsum("ji,ip,iq->jpq", quad, jt, jt) / n
                      - a[None, :, None] * cs[:-1] * a[None, None, :])
            src = lr**2 * kappa_over_b * jnp.concatenate([sigma0[None], sigma1])
        cs = f[None, :, None] * cs * f[None, None, :] + src
        return (f * m - lr * b, cs), None

    def summaries(m, cs, m_prev, cs_prev, delta):
        mu, v = residual_mean(m)
        _, v_prev = residual_mean(m_prev)
        mean0 = jnp.sum(mu**2) / (2 * n)
        gc = a[None, :, None] * cs  # G C_j
        mean1 = 0.5 * jnp.einsum("jpp->j", gc)
        var2 = 0.5 * jnp.einsum("jpq,lqp->jl", gc, gc)
        var1 = jnp.einsum("p,jpq,q->j", v, cs, v)
        decay = f**delta  # M = F^Δ (diagonal)
        gmc = a[None, :, None] * decay[None, :, None] * cs_prev  # G M C_{k−1}
        gcm = a[None, :, None] * cs_prev * decay[None, None, :]  # G C_{k−1} Mᵀ
        cov2 = 0.5 * jnp.einsum("jpq,lqp->jl", gmc, gcm)
        cov1 = jnp.einsum("p,jpq,q->j", v * decay, cs_prev, v_prev)
        return LossMoments(mean0, mean1, var2, var1, cov2, cov1)

    def to_log_point(carry, step):
        t, m, cs, m_prev, cs_prev = carry
        delta = step - t

        def body(_, s):
            return one_step(s, None)[0]

        m_new, cs_new = jax.lax.fori_loop(0, delta, body, (m, cs))
        out = summaries(m_new, cs_new, m, cs, delta)
        return (step, m_new, cs_new, m_new, cs_new), out

    m0 = jnp.zeros(p, a.dtype)
    cs0 = jnp.zeros((n_terms, p, p), a.dtype)
    init = (jnp.zeros((), steps.dtype), m0, cs0, m0, cs0)
    _, out = jax.lax.scan(to_log_point, init, steps)
    # coefficient arrays with the log point last; the first point has no predecessor
    out = jax.tree_util.tree_map(lambda x: jnp.moveaxis(x, 0, -1), out)
    return out._replace(cov2=out.cov2.at[..., 0].set(0.0),
                        cov1=out.cov1.at[..., 0].set(0.0))


def combine(moments: LossMoments, c):
    """E L, Var L and the lag-1 covariance for noise-term weights c (J,) (or (R, J))."""
    c = jnp.asarray(c)
    mean = moments.mean0 + jnp.einsum("...j,...jt->...t", c, moments.mean1)
    var = (jnp.einsum("...j,...l,...jlt->...t", c, c, moments.var2)
           + jnp.einsum("...j,...jt->...t", c, moments.var1))
    cov = (jnp.einsum("...j,...l,...jlt->...t", c, c, moments.cov2)
           + jnp.einsum("...j,...jt->...t", c, moments.cov1))
    return mean, var, cov
