"""A training problem: a network ``apply(params, x)``, its data and the MSE loss.

Everything the simulators, closures and inference need is expressed on the flat
weight vector θ ∈ R^P (``jax.flatten_util.ravel_pytree`` of the parameter pytree):

    f(x; θ)            network output, one scalar per input row
    r_i(θ)             = f(x_i; θ) − y_i                       (train residual)
    ℓ_i(θ)             = ½ r_i(θ)²                              (per-sample loss)
    L(θ)               = (1/N) Σ_i ℓ_i(θ)                       (train loss)
    J(x)               = ∂f(x; θ)/∂θ ∈ R^{n×P}                  (output Jacobian)
    Θ(x, x')           = J(x) J(x')ᵀ                            (empirical NTK)
    H_i                = ∂²f(x_i; θ)/∂θ²                        (output Hessian)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int


class Problem(eqx.Module):
    """A supervised regression problem with the mean-squared-error loss.

    **Arguments:**

    - `apply`: ``apply(params, x) -> outputs`` for a batch ``x`` of shape ``(n, ...)``,
      returning shape ``(n,)`` or ``(n, 1)``. Plain functions, bound equinox modules
      (``lambda p, x: eqx.combine(p, static)(x)``) and flax ``model.apply`` all fit.
    - `params`: the initial parameter pytree θ0.
    - `x_train`, `y_train`: N training inputs and targets.
    - `x_test`, `y_test`: optional M test inputs and targets.
    - `name`: a short name recorded in artefacts.
    - `config`: a JSON-serialisable dict describing how the problem was built.

    The loss is ℓ_i = ½ (f(x_i) − y_i)², L = (1/N) Σ_i ℓ_i (DESIGN §1).
    """

    apply: Callable[[Any, Array], Array] = eqx.field(static=True)
    params: Any
    x_train: Array
    y_train: Float[Array, " N"]
    x_test: Array
    y_test: Float[Array, " M"]
    name: str = eqx.field(static=True, default="custom")
    config_json: str = eqx.field(static=True, default="{}")

    def __init__(
        self,
        apply,
        params,
        x_train,
        y_train,
        x_test=None,
        y_test=None,
        *,
        name: str = "custom",
        config: dict | None = None,
    ):
        x_train = jnp.asarray(x_train)
        y_train = jnp.asarray(y_train)
        if x_train.ndim == 1:
            x_train = x_train[:, None]
        if y_train.ndim == 2 and y_train.shape[1] == 1:
            y_train = y_train[:, 0]
        if y_train.ndim != 1:
            raise ValueError(
                f"y_train must have shape (N,) (scalar regression targets), got "
                f"{y_train.shape}; multi-output problems are not supported yet."
            )
        if x_train.shape[0] != y_train.shape[0]:
            raise ValueError(
                f"x_train has {x_train.shape[0]} rows but y_train has "
                f"{y_train.shape[0]}; they must match."
            )
        if x_train.shape[0] < 2:
            raise ValueError("a problem needs at least 2 training points.")
        if x_test is None:
            x_test = x_train[:0]
            y_test = y_train[:0]
        x_test = jnp.asarray(x_test)
        y_test = jnp.asarray(y_test)
        if x_test.ndim == 1:
            x_test = x_test[:, None]
        if y_test.ndim == 2 and y_test.shape[1] == 1:
            y_test = y_test[:, 0]
        if x_test.shape[0] != y_test.shape[0]:
            raise ValueError(
                f"x_test has {x_test.shape[0]} rows but y_test has {y_test.shape[0]}."
            )
        params = jax.tree_util.tree_map(jnp.asarray, params)
        out = jax.eval_shape(apply, params, x_train)
        if out.shape not in ((x_train.shape[0],), (x_train.shape[0], 1)):
            raise ValueError(
                f"apply(params, x_train) must return shape ({x_train.shape[0]},) or "
                f"({x_train.shape[0]}, 1); got {out.shape}."
            )
        self.apply = apply
        self.params = params
        self.x_train = x_train
        self.y_train = y_train.astype(out.dtype)
        self.x_test = x_test
        self.y_test = y_test.astype(out.dtype)
        self.name = name
        self.config_json = json.dumps(config or {}, sort_keys=True)

    # ------------------------------------------------------------------ shapes
    @property
    def config(self) -> dict:
        return {"name": self.name, **json.loads(self.config_json)}

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]

    @property
    def n_test(self) -> int:
        return self.x_test.shape[0]

    @property
    def theta0(self) -> Float[Array, " P"]:
        """The initial weights as a flat vector θ0."""
        return ravel_pytree(self.params)[0]

    @property
    def n_params(self) -> int:
        return self.theta0.shape[0]

    def unravel(self, theta: Float[Array, " P"]):
        """Flat θ back to the parameter pytree."""
        return ravel_pytree(self.params)[1](theta)

    def layer_ids(self) -> Int[Array, " P"]:
        """Group index of every weight: one group per top-level child of the params.

        A list/tuple/dict of layers gives one group per layer; any other pytree gives
        one group per leaf. Used by `Layerwise` noise.
        """
        params = self.params
        if isinstance(params, (list, tuple, dict)):
            # top-level children in the order ravel_pytree flattens them
            children = jax.tree_util.tree_leaves(params, is_leaf=lambda x: x is not params)
        else:
            children = jax.tree_util.tree_leaves(params)
        ids = [
            jnp.full((ravel_pytree(c)[0].shape[0],), k, dtype=jnp.int32)
            for k, c in enumerate(children)
        ]
        return jnp.concatenate(ids)

    @property
    def n_layers(self) -> int:
        return int(self.layer_ids().max()) + 1

    # ------------------------------------------------------------------ outputs
    def output(self, theta: Float[Array, " P"], x: Array) -> Float[Array, " n"]:
        """f(x; θ) for a batch x."""
        out = self.apply(self.unravel(theta), x)
        return jnp.reshape(out, (x.shape[0],))

    def train_output(self, theta):
        return self.output(theta, self.x_train)

    def test_output(self, theta):
        return self.output(theta, self.x_test)

    def residual(self, theta: Float[Array, " P"]) -> Float[Array, " N"]:
        """r_i = f(x_i; θ) − y_i on the training set."""
        return self.train_output(theta) - self.y_train

    def per_sample_loss(self, theta: Float[Array, " P"]) -> Float[Array, " N"]:
        """ℓ_i = ½ r_i²."""
        return 0.5 * self.residual(theta) ** 2

    def loss(self, theta: Float[Array, " P"]) -> Float[Array, ""]:
        """L = (1/N) Σ_i ℓ_i."""
        return jnp.mean(self.per_sample_loss(theta))

    def test_loss(self, theta: Float[Array, " P"]) -> Float[Array, ""]:
        """(1/2M) Σ_j (f(x_j) − y_j)² on the test set (nan without test data)."""
        if self.n_test == 0:
            return jnp.full((), jnp.nan, theta.dtype)
        return 0.5 * jnp.mean((self.test_output(theta) - self.y_test) ** 2)

    def grad(self, theta: Float[Array, " P"]) -> Float[Array, " P"]:
        """∇L(θ)."""
        return jax.grad(self.loss)(theta)

    def weighted_loss_grad(
        self, theta: Float[Array, " P"], weights: Float[Array, " N"]
    ) -> Float[Array, " P"]:
        """∇_θ Σ_i c_i ℓ_i(θ): one vector–Jacobian product, no per-sample gradients.

        With c_i = 1/N this is ∇L; with c_i = (1/N)(ΔW_i − mean ΔW) it is the SGD
        noise direction (DESIGN §2).
        """
        return jax.grad(lambda t: jnp.sum(weights * self.per_sample_loss(t)))(theta)

    def batch_loss_grad(
        self, theta: Float[Array, " P"], index: Int[Array, " B"]
    ) -> Float[Array, " P"]:
        """Minibatch gradient ĝ = (1/B) Σ_{i∈batch} ∇ℓ_i."""
        x = self.x_train[index]
        y = self.y_train[index]

        def batch_loss(t):
            return 0.5 * jnp.mean((self.output(t, x) - y) ** 2)

        return jax.grad(batch_loss)(theta)

    def per_sample_grads(self, theta: Float[Array, " P"]) -> Float[Array, "N P"]:
        """g_i = ∇ℓ_i = r_i J_i, stacked (forms an N×P matrix: small problems only)."""
        return self.residual(theta)[:, None] * self.jacobian(theta, self.x_train)

    def gradient_covariance(self, theta: Float[Array, " P"]) -> Float[Array, "P P"]:
        """Σ(θ) = (1/N) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ (forms P×P: small problems only)."""
        g = self.per_sample_grads(theta)
        g = g - jnp.mean(g, axis=0, keepdims=True)
        return g.T @ g / self.n_train

    def reflected(self) -> "Problem":
        """The same problem in weights θ' = −θ: apply'(θ', x) = apply(−θ', x).

        Driving a path of it with the Brownian path of the original (start −θ0) gives the
        antithetic twin of that path (noise W → −W), used by the experiments and
        benchmarks for variance reduction.
        """
        neg = lambda tree: jax.tree_util.tree_map(lambda a: -a, tree)  # noqa: E731
        apply = self.apply
        return Problem(lambda params, x: apply(neg(params), x), neg(self.params),
                       self.x_train, self.y_train, self.x_test, self.y_test,
                       name=self.name + "-reflected")

    # ------------------------------------------------------------------ derivatives
    def jacobian(self, theta: Float[Array, " P"], x: Array) -> Float[Array, "n P"]:
        """J(x) = ∂f(x; θ)/∂θ."""
        return jax.jacrev(lambda t: self.output(t, x))(theta)

    def ntk(self, theta: Float[Array, " P"], x1: Array, x2: Array) -> Float[Array, "n m"]:
        """Empirical NTK Θ(x1, x2) = J(x1) J(x2)ᵀ."""
        j1 = self.jacobian(theta, x1)
        j2 = self.jacobian(theta, x2)
        return j1 @ j2.T

    def jvp(self, theta, x, v: Float[Array, " P"]) -> Float[Array, " n"]:
        """J(x) v."""
        return jax.jvp(lambda t: self.output(t, x), (theta,), (v,))[1]

    def vjp(self, theta, x, u: Float[Array, " n"]) -> Float[Array, " P"]:
        """J(x)ᵀ u."""
        return jax.vjp(lambda t: self.output(t, x), theta)[1](u)[0]

    def output_hvp(self, theta, x, v: Float[Array, " P"]) -> Float[Array, "n P"]:
        """H_i v for every point i of x: the output Hessian–vector products."""

        def jv(t):
            return self.jvp(t, x, v)

        return jax.jacrev(jv)(theta)

    def loss_hvp(self, theta, v: Float[Array, " P"]) -> Float[Array, " P"]:
        """∇²L(θ) v (forward-over-reverse)."""
        return jax.jvp(self.grad, (theta,), (v,))[1]

    def hessian_trace(self, theta, key, probes: int = 8) -> Float[Array, ""]:
        """Hutchinson estimate tr ∇²L ≈ (1/m) Σ_k z_kᵀ ∇²L z_k, z_k Rademacher."""
        z = jax.random.rademacher(key, (probes, theta.shape[0]), dtype=theta.dtype)
        quad = jax.vmap(lambda v: jnp.vdot(v, self.loss_hvp(theta, v)))(z)
        return jnp.mean(quad)

    def max_curvature(self, theta=None, iters: int = 50) -> float:
        """λ_max of ∇²L(θ) by power iteration (θ0 by default)."""
        theta = self.theta0 if theta is None else theta
        v = jnp.ones_like(theta) / jnp.sqrt(theta.shape[0])
        lam = jnp.zeros((), theta.dtype)
        for _ in range(iters):
            w = _loss_hvp(self, theta, v)
            lam = jnp.vdot(v, w)
            norm = jnp.linalg.norm(w)
            if not bool(norm > 0):
                break
            v = w / norm
        return float(lam)


@eqx.filter_jit
def _loss_hvp(problem, theta, v):
    return problem.loss_hvp(theta, v)
