"""diffrax terms of the SGD SDE, in SGD-step time.

Drift (first-order stochastic modified equation, optional second-order correction):

    b(θ, t) = −η(t) [∇F(θ) + (η(t)/4) ∇‖∇F(θ)‖²],   F = L + (λ/2)‖θ‖²

Additive noise (`Isotropic`, `Layerwise`): diffusion η(t) diag(D) against a
P-dimensional Brownian motion — any diffrax SDE solver applies (Euler, Heun, SRA1,
ShARK).

Minibatch noise: with the centred counting process M ∈ R^N of DESIGN §2,

    dθ = −η ∇L dt − (η/B) √s Σ_i g_i dM_i = −∇_θ Σ_i c_i ℓ_i(θ),
    c_i = η dt / N + (η/B) √s (ΔM_i − mean ΔM),

one vector–Jacobian product per step; no P×P or P×N matrix is formed.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array


class Drift(eqx.Module):
    """b(θ, t) = −η(t)[∇F + (η/4)∇‖∇F‖²] with F = L + (λ/2)‖θ‖²."""

    problem: eqx.Module
    lr: Array | Callable
    weight_decay: Array
    sme_correction: bool = eqx.field(static=True)

    def eta(self, t):
        return self.lr(t) if callable(self.lr) else self.lr

    def objective_grad(self, theta):
        return self.problem.grad(theta) + self.weight_decay * theta

    def __call__(self, t, theta, args=None):
        eta = self.eta(t)
        g = self.objective_grad(theta)
        if self.sme_correction:
            # ∇‖∇F‖² = 2 ∇²F ∇F (forward-over-reverse Hessian–vector product)
            hg = jax.jvp(self.objective_grad, (theta,), (g,))[1]
            g = g + 0.5 * eta * hg
        return -eta * g


class AdditiveDiffusion(eqx.Module):
    """η(t) diag(D) as a lineax diagonal operator acting on dW ∈ R^P."""

    drift: Drift
    diagonal: Array

    def __call__(self, t, theta, args=None):
        return lx.DiagonalLinearOperator(self.drift.eta(t) * self.diagonal)


class MinibatchTerm(dfx.AbstractTerm):
    """Drift and exact minibatch noise of SGD fused into one term.

    The control over [t0, t1] is (Δt, ΔW) with ΔW ∈ R^N Brownian. For
    ``sampling="iid"`` the state is θ and ΔM = a ΔW. For ``sampling="reshuffle"`` the
    state is (θ, β), β a standard Brownian bridge on each epoch [0, E], advanced by its
    exact conditional law

        Δβ = −β / n + √((n − 1)/n) ΔW,   n = steps of size Δt left in the epoch,

    and ΔM = a Δβ; β returns to exactly 0 at every epoch end.
    """

    drift: Drift
    brownian: dfx.AbstractBrownianPath
    scale: Array
    batch_size: int = eqx.field(static=True)
    counting_scale: float = eqx.field(static=True)
    reshuffle: bool = eqx.field(static=True)
    epoch_length: int = eqx.field(static=True)
    dt: float = eqx.field(static=True)

    def contr(self, t0, t1, **kwargs):
        return (t1 - t0, self.brownian.evaluate(t0, t1))

    def vf(self, t, y, args):
        def apply(control):
            return self.vf_prod(t, y, args, control)

        control = jax.eval_shape(lambda: self.contr(t, t))
        return lx.FunctionLinearOperator(apply, control)

    def prod(self, vf, control):
        return vf.mv(control)

    def vf_prod(self, t, y, args, control):
        dt, dw = control
        problem = self.drift.problem
        n = problem.n_train
        eta = self.drift.eta(t)
        if self.reshuffle:
            theta, beta = y
            steps_per_epoch = round(self.epoch_length / self.dt)
            k = jnp.round(t / self.dt).astype(jnp.int32) % steps_per_epoch
            left = (steps_per_epoch - k).astype(dw.dtype)
            dbeta = -beta / left + jnp.sqrt((left - 1.0) / left) * dw
            dm = self.counting_scale * dbeta
        else:
            theta = y
            dm = self.counting_scale * dw
        dm = dm - jnp.mean(dm)
        c = eta * dt / n + (eta / self.batch_size) * jnp.sqrt(self.scale) * dm
        dtheta = -problem.weighted_loss_grad(theta, c)
        dtheta = dtheta - eta * dt * self.drift.weight_decay * theta
        if self.drift.sme_correction:
            g = self.drift.objective_grad(theta)
            hg = jax.jvp(self.drift.objective_grad, (theta,), (g,))[1]
            dtheta = dtheta - 0.5 * eta**2 * dt * hg
        if self.reshuffle:
            return (dtheta, dbeta)
        return dtheta
