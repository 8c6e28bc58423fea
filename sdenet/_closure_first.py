"""First-order moment closure: the linearised network, exact for it (DESIGN §3).

Around the expansion point θe, f(x; θe + δ) ≈ f_e(x) + J(x) δ and the SDE becomes

    dδ = −η (A δ + b) dt + η D(δ) dW,   A = J_tᵀ J_t / N,  b = J_tᵀ u_0 / N,

u_0 = f_e(x_train) − y. Stacking train and test outputs z = f_e + J_all δ:

    dμ_z/dt = −(η/N) K_{all,train} μ_u
    dV_z/dt = −(η/N)(K_{all,train} V_{train,all} + V_{all,train} K_{train,all}) + Q

- additive noise (`Isotropic`, `Layerwise`): Q = η² J_all D² J_allᵀ is constant and δ is
  an Ornstein–Uhlenbeck process, solved in closed form through A = W diag(a) Wᵀ:
      E δ(t) = −η W [φ(η a, t) ∘ Wᵀ b],
      Cov δ(t) = W [η² (Wᵀ D² W) ∘ φ(η(a_k + a_l), t)] Wᵀ,   φ(x, t) = (1 − e^{−xt})/x.
  Every non-zero train mode relaxes to variance η σ² N/2 (isotropic), so
  E L_∞ = η σ² rank(Θ)/4; directions outside the row space of J_train diffuse (∝ t).
- `Minibatch` (iid): Q = η² s κ/(B N) K_{all,train} (Π ∘ S) K_{train,all},
  Π = I − 11ᵀ/N, S = μ_u μ_uᵀ + V_{train,train}; still exact (the noise is quadratic
  in the state) and integrated as an ODE with diffrax (Tsit5, adaptive, tight tolerances).

σ → 0 recovers gradient flow: μ_train(t) − y = e^{−ηΘt/N}(f_e − y).
"""

from __future__ import annotations

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp

from ._noise import Isotropic, Layerwise, Minibatch


def _phi(x, t):
    """(1 − e^{−x t}) / x, continuous at x = 0 (value t)."""
    small = jnp.abs(x * t) < 1e-8
    safe = jnp.where(small, 1.0, x)
    return jnp.where(small, t, -jnp.expm1(-safe * t) / safe)


def linearisation(problem, theta_e):
    """Outputs and Jacobians at the expansion point: f_e(train), f_e(test), J_train, J_test."""
    return (problem.train_output(theta_e), problem.test_output(theta_e),
            problem.jacobian(theta_e, problem.x_train),
            problem.jacobian(theta_e, problem.x_test))


@eqx.filter_jit
def first_order_additive(problem, diagonal, lr, times, theta_e):
    """Closed-form output moments for additive noise D = diag(d); returns (μ_z, V_z).

    μ_z: (T, N+M) mean outputs, V_z: (T, N+M, N+M) their covariance. Compiled once
    per problem (its ``apply``) and array shapes: σ, η, the times and θe are traced.
    """
    f_tr, f_te, j_tr, j_te = linearisation(problem, theta_e)
    n = problem.n_train
    j_all = jnp.concatenate([j_tr, j_te], axis=0)
    f_all = jnp.concatenate([f_tr, f_te])
    a, w = jnp.linalg.eigh(j_tr.T @ j_tr / n)
    a = jnp.clip(a, 0.0, None)
    b = w.T @ (j_tr.T @ (f_tr - problem.y_train)) / n
    q = lr**2 * (w.T * diagonal[None, :] ** 2) @ w
    lw = j_all @ w

    def at(t):
        mean = f_all - lr * lw @ (_phi(lr * a, t) * b)
        cov_modes = q * _phi(lr * (a[:, None] + a[None, :]), t)
        return mean, lw @ cov_modes @ lw.T

    return jax.lax.map(at, times)


@eqx.filter_jit
def first_order_minibatch(problem, noise_coef, lr, times, theta_e):
    """Exact output moments for iid minibatch noise, integrated with diffrax.

    ``noise_coef`` = s κ / B (traced, so one compilation serves every batch size).
    """
    f_tr, f_te, j_tr, j_te = linearisation(problem, theta_e)
    n = problem.n_train
    j_all = jnp.concatenate([j_tr, j_te], axis=0)
    k_at = j_all @ j_tr.T  # K_{all,train}
    y = problem.y_train
    pi = jnp.eye(n) - 1.0 / n
    coef = lr**2 * noise_coef / n

    def vector_field(t, state, args):
        mu, v = state
        mu_u = mu[:n] - y
        dmu = -(lr / n) * k_at @ mu_u
        kv = k_at @ v[:n, :]
        s = jnp.outer(mu_u, mu_u) + v[:n, :n]
        q = coef * k_at @ (pi * s) @ k_at.T
        dv = -(lr / n) * (kv + kv.T) + q
        return dmu, dv

    mu0 = jnp.concatenate([f_tr, f_te])
    v0 = jnp.zeros((mu0.shape[0], mu0.shape[0]), mu0.dtype)
    # Initial step from the fastest mode: 0.1 / (η λ_max(Θ)/N).
    lam = jnp.linalg.eigvalsh(j_tr @ j_tr.T)[-1]
    dt0 = 0.1 / jnp.maximum(lr * lam / n, 1e-12)
    rtol = 1e-10 if mu0.dtype == jnp.float64 else 1e-6
    sol = dfx.diffeqsolve(
        dfx.ODETerm(vector_field), dfx.Tsit5(), times[0], times[-1], dt0, (mu0, v0),
        saveat=dfx.SaveAt(ts=times),
        stepsize_controller=dfx.PIDController(rtol=rtol, atol=rtol * 1e-2),
        max_steps=1_000_000,
    )
    return sol.ys


def first_order(problem, noise, lr, times, theta_e):
    """Mean and covariance of all outputs (train then test) at ``times``."""
    if isinstance(noise, (Isotropic, Layerwise)):
        return first_order_additive(problem, jnp.asarray(noise.diagonal(problem)), lr,
                                    times, theta_e)
    if isinstance(noise, Minibatch):
        if noise.sampling != "iid":
            raise ValueError(
                "the moment closure supports Minibatch(sampling='iid') only: under "
                "random reshuffling the counting process is a Brownian bridge whose "
                "memory the closure does not model; simulate it with `sdenet simulate "
                "--sampling reshuffle` instead."
            )
        coef = noise.scale * noise.kappa(problem.n_train) / noise.batch_size
        return first_order_minibatch(problem, jnp.asarray(coef, lr.dtype), lr, times,
                                     theta_e)
    raise ValueError(f"unknown noise model {noise!r}")
