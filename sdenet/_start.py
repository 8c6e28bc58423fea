"""Starting points: weights trained to (near) a minimum by full-batch gradient descent."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp


@eqx.filter_jit
def _descend(problem, theta, lr, steps: int):
    def body(theta, _):
        return theta - lr * problem.grad(theta), None

    return jax.lax.scan(body, theta, None, length=steps)[0]


def trained_weights(problem, lr: float = 0.1, steps: int = 5000, theta0=None):
    """θ after ``steps`` of full-batch gradient descent θ ← θ − η∇L(θ) from θ0.

    Used as the "near a minimum" start of the closure experiments (DESIGN §3).
    Raises ValueError if the descent diverges.
    """
    theta = problem.theta0 if theta0 is None else jnp.asarray(theta0)
    out = _descend(problem, theta, jnp.asarray(lr, theta.dtype), int(steps))
    if not bool(jnp.all(jnp.isfinite(out))):
        raise ValueError(
            f"gradient descent to the trained start diverged at lr={lr}; the start "
            f"needs lr < 2/λ_max = {2 / problem.max_curvature(theta):.4g}."
        )
    return out
