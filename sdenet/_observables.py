"""Observables recorded along every path, every ``save_every`` steps, inside the jit."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

# name -> extra dims after (path, time)
OBSERVABLE_DIMS = {
    "train_loss": (),
    "test_loss": (),
    "train_output": ("train_point",),
    "test_output": ("test_point",),
    "weight_norm": (),
    "distance_from_init": (),
    "hessian_trace": (),
    "weights": ("weight",),
}

OBSERVABLE_DOCS = {
    "train_loss": "L(θ) = (1/2N) Σ_i (f(x_i) − y_i)² (full-batch train loss)",
    "test_loss": "(1/2M) Σ_j (f(x_j) − y_j)² on the test set",
    "train_output": "f(x_i; θ) at the recorded train points",
    "test_output": "f(x_j; θ) at the recorded test points",
    "weight_norm": "‖θ‖₂",
    "distance_from_init": "‖θ − θ0‖₂",
    "hessian_trace": "Hutchinson estimate of tr ∇²L(θ)",
    "weights": "the flat weight vector θ",
}


class Observables(eqx.Module):
    """Which observables to record.

    **Arguments:**

    - `train_points`, `test_points`: indices of the points whose outputs are recorded
      (None: all; an empty tuple: none).
    - `weights`: also record the flat weight vector θ (dim ``weight``).
    - `hessian_trace`: also record a Hutchinson estimate of tr ∇²L with
      `hutchinson_probes` Rademacher probes (costs that many Hessian–vector products).
    """

    train_points: tuple | None = eqx.field(static=True, default=None)
    test_points: tuple | None = eqx.field(static=True, default=None)
    hessian_trace: bool = eqx.field(static=True, default=False)
    weights: bool = eqx.field(static=True, default=False)
    hutchinson_probes: int = eqx.field(static=True, default=8)

    def __check_init__(self):
        if self.hutchinson_probes < 1:
            raise ValueError("hutchinson_probes must be ≥ 1.")

    def indices(self, problem):
        def pick(points, n, what):
            if points is None:
                return np.arange(n)
            idx = np.asarray(points, dtype=int).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(
                    f"{what} indices must lie in [0, {n}); got {list(idx)}."
                )
            return idx

        return (pick(self.train_points, problem.n_train, "train_points"),
                pick(self.test_points, problem.n_test, "test_points"))

    def names(self, problem) -> list[str]:
        tr, te = self.indices(problem)
        out = ["train_loss"]
        if problem.n_test:
            out.append("test_loss")
        if tr.size:
            out.append("train_output")
        if te.size and problem.n_test:
            out.append("test_output")
        out += ["weight_norm", "distance_from_init"]
        if self.hessian_trace:
            out.append("hessian_trace")
        if self.weights:
            out.append("weights")
        return out

    def __call__(
        self, problem, theta: Float[Array, " P"], theta0: Float[Array, " P"], key
    ) -> dict[str, Array]:
        """Evaluate the observables at one weight vector θ."""
        tr, te = self.indices(problem)
        names = self.names(problem)
        f_train = problem.train_output(theta)
        out = {"train_loss": 0.5 * jnp.mean((f_train - problem.y_train) ** 2)}
        if "test_loss" in names or "test_output" in names:
            f_test = problem.test_output(theta)
            if "test_loss" in names:
                out["test_loss"] = 0.5 * jnp.mean((f_test - problem.y_test) ** 2)
            if "test_output" in names:
                out["test_output"] = f_test[te]
        if "train_output" in names:
            out["train_output"] = f_train[tr]
        out["weight_norm"] = jnp.linalg.norm(theta)
        out["distance_from_init"] = jnp.linalg.norm(theta - theta0)
        if self.hessian_trace:
            out["hessian_trace"] = problem.hessian_trace(
                theta, key, self.hutchinson_probes
            )
        if self.weights:
            out["weights"] = theta
        return out

    def to_config(self) -> dict:
        return {
            "train_points": None if self.train_points is None else list(self.train_points),
            "test_points": None if self.test_points is None else list(self.test_points),
            "hessian_trace": self.hessian_trace,
            "weights": self.weights,
            "hutchinson_probes": self.hutchinson_probes,
        }
