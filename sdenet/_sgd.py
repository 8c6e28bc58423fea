"""Discrete minibatch SGD (optax): the ground truth the SDE approximates.

θ_{k+1} = θ_k − η_k (ĝ_k + λ θ_k),  ĝ_k = (1/B) Σ_{i ∈ batch_k} ∇ℓ_i(θ_k),

with ``sampling="iid"`` (a fresh batch of B distinct points every step) or
``sampling="reshuffle"`` (a new permutation every epoch, cut into N/B batches, as
PyTorch's ``DataLoader(shuffle=True)``). Same observables and Dataset layout as
`simulate`; the ``path`` axis holds the independent runs.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import xarray as xr

from ._artefact import ensemble_dataset
from ._ensemble import run_ensemble
from ._observables import Observables
from ._problem import Problem
from ._schedule import as_learning_rate, lr_config
from ._sde import _check_times, _stability_hint

_BATCH_STREAM = 0x5D1  # sub-stream of a run's key used for batch selection


class SGDDynamics(eqx.Module):
    """One SGD run, advanced one save interval (``save_every`` steps) at a time."""

    problem: Problem
    lr: jax.Array | Callable
    weight_decay: jax.Array
    theta0: jax.Array
    observables: Observables
    batch_size: int = eqx.field(static=True)
    sampling: str = eqx.field(static=True)
    save_every: int = eqx.field(static=True)

    def optimizer(self) -> optax.GradientTransformation:
        return optax.chain(optax.add_decayed_weights(self.weight_decay),
                           optax.sgd(self.lr))

    def init(self, key):
        return (self.theta0, self.optimizer().init(self.theta0))

    def batch(self, key, step):
        """Indices of the minibatch used at global step ``step``."""
        n, b = self.problem.n_train, self.batch_size
        key = jax.random.fold_in(key, _BATCH_STREAM)
        if self.sampling == "iid":
            perm = jax.random.permutation(jax.random.fold_in(key, step), n)
            return perm[:b]
        epoch_len = n // b
        epoch, pos = step // epoch_len, step % epoch_len
        perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
        return jax.lax.dynamic_slice(perm, (pos * b,), (b,))

    def advance(self, state, k, key):
        opt = self.optimizer()

        def one_step(state, step):
            theta, opt_state = state
            grad = self.problem.batch_loss_grad(theta, self.batch(key, step))
            updates, opt_state = opt.update(grad, opt_state, theta)
            return (optax.apply_updates(theta, updates), opt_state), None

        steps = k * self.save_every + jnp.arange(self.save_every)
        state, _ = jax.lax.scan(one_step, state, steps)
        return state

    def observe(self, state, key):
        return self.observables(self.problem, state[0], self.theta0, key)


def sgd(
    problem: Problem,
    batch_size: int,
    lr: float | Callable,
    steps: int,
    runs: int,
    key,
    *,
    sampling: str = "iid",
    save_every: int | None = None,
    weight_decay: float = 0.0,
    theta0=None,
    observables: Observables | None = None,
    stats_only: bool = False,
    progress: bool = True,
    seed: int | None = None,
) -> xr.Dataset:
    """Run ``runs`` independent minibatch-SGD runs (optax) and record observables.

    **Arguments:** as `simulate`, with `batch_size` B and `sampling` "iid" or
    "reshuffle" (which needs B to divide N). The learning rate may be an optax
    schedule, evaluated at the step count.

    **Returns:** a Dataset in the layout of `simulate` (the ``path`` axis = runs).
    """
    steps, save_every = _check_times(steps, save_every, 1.0)
    observables = observables or Observables()
    n = problem.n_train
    if int(batch_size) != batch_size or not (1 <= batch_size <= n):
        raise ValueError(f"--batch-size must be an integer in [1, {n}], got {batch_size}.")
    if sampling not in ("iid", "reshuffle"):
        raise ValueError(f"--sampling must be 'iid' or 'reshuffle', got {sampling!r}.")
    if sampling == "reshuffle" and n % batch_size:
        raise ValueError(
            f"sampling='reshuffle' needs --batch-size to divide N = {n}; "
            f"{batch_size} does not."
        )
    if not (weight_decay >= 0):
        raise ValueError(f"--weight-decay must be ≥ 0, got {weight_decay}.")
    dtype = problem.theta0.dtype
    start = problem.theta0 if theta0 is None else jnp.asarray(theta0, dtype)
    dynamics = SGDDynamics(
        problem=problem, lr=as_learning_rate(lr, dtype),
        weight_decay=jnp.asarray(weight_decay, dtype), theta0=start,
        observables=observables, batch_size=int(batch_size), sampling=sampling,
        save_every=save_every,
    )
    out = run_ensemble(dynamics, key, runs, steps // save_every, save_every,
                       stats_only=stats_only, progress=progress,
                       desc=f"sgd {problem.name}",
                       stability_hint=_stability_hint(problem, lr, start))
    config = {
        "kind": "sgd",
        "problem": problem.config,
        "batch_size": int(batch_size),
        "sampling": sampling,
        "lr": lr_config(lr),
        "steps": steps,
        "runs": runs,
        "save_every": save_every,
        "weight_decay": float(weight_decay),
        "stats_only": bool(stats_only),
        "observables": observables.to_config(),
        "custom_theta0": theta0 is not None,
    }
    return ensemble_dataset(out, problem, observables, save_every, runs, stats_only,
                            config, seed)
