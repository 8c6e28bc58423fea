"""SDE ensembles of SGD, solved with diffrax:  dθ = −η∇L dt + η D(θ) dW  (step time)."""

from __future__ import annotations

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import xarray as xr

from ._artefact import ensemble_dataset
from ._ensemble import run_ensemble
from ._noise import AbstractNoise, Isotropic, Layerwise, Minibatch
from ._observables import Observables
from ._problem import Problem
from ._schedule import as_learning_rate, lr_config
from ._terms import AdditiveDiffusion, Drift, MinibatchTerm

_BROWNIAN_STREAM = 0xB1  # sub-stream of a path's key that drives its Brownian motion

SOLVERS = {
    "euler": (dfx.Euler, False),
    "heun": (dfx.Heun, False),
    "sra1": (dfx.SRA1, True),
    "shark": (dfx.ShARK, True),
}


class SDEDynamics(eqx.Module):
    """One path of the SGD SDE, advanced one save interval at a time by diffrax."""

    drift: Drift
    diagonal: jax.Array | None
    scale: jax.Array | None
    theta0: jax.Array
    observables: Observables
    noise_kind: str = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)
    counting_scale: float = eqx.field(static=True)
    save_every: float = eqx.field(static=True)
    dt: float = eqx.field(static=True)
    solver: str = eqx.field(static=True)

    @property
    def problem(self) -> Problem:
        return self.drift.problem

    def init(self, key):
        if self.noise_kind == "reshuffle":
            n = self.problem.n_train
            return (self.theta0, jnp.zeros((n,), self.theta0.dtype))
        return self.theta0

    def theta(self, state):
        return state[0] if isinstance(state, tuple) else state

    def _terms(self, key):
        solver_cls, levy = SOLVERS[self.solver]
        dtype = self.theta0.dtype
        key = jax.random.fold_in(key, _BROWNIAN_STREAM)
        if self.noise_kind == "additive":
            shape = jax.ShapeDtypeStruct(self.theta0.shape, dtype)
            bm = dfx.UnsafeBrownianPath(
                shape, key, levy_area=dfx.SpaceTimeLevyArea if levy else dfx.BrownianIncrement
            )
            return dfx.MultiTerm(
                dfx.ODETerm(self.drift),
                dfx.ControlTerm(AdditiveDiffusion(self.drift, self.diagonal), bm),
            )
        n = self.problem.n_train
        bm = dfx.UnsafeBrownianPath(jax.ShapeDtypeStruct((n,), dtype), key)
        return MinibatchTerm(
            drift=self.drift,
            brownian=bm,
            scale=self.scale,
            batch_size=self.batch_size,
            counting_scale=self.counting_scale,
            reshuffle=self.noise_kind == "reshuffle",
            epoch_length=n // self.batch_size,
            dt=self.dt,
        )

    def advance(self, state, k, key):
        t0 = k * self.save_every
        t1 = t0 + self.save_every
        n_inner = round(self.save_every / self.dt)
        solver_cls, _ = SOLVERS[self.solver]
        sol = dfx.diffeqsolve(
            self._terms(key),
            solver_cls(),
            t0,
            t1,
            self.dt,
            state,
            stepsize_controller=dfx.ConstantStepSize(),
            saveat=dfx.SaveAt(t1=True),
            adjoint=dfx.ForwardMode(),
            max_steps=n_inner + 2,
            throw=False,
        )
        return jax.tree_util.tree_map(lambda x: x[0], sol.ys)

    def observe(self, state, key):
        return self.observables(self.problem, self.theta(state), self.theta0, key)


def _check_times(steps, save_every, dt):
    if int(steps) != steps or steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {steps}.")
    if save_every is None:
        save_every = max(1, int(steps) // 100)
    if int(save_every) != save_every or save_every < 1 or steps % save_every:
        raise ValueError(
            f"--save-every must be a positive integer dividing --steps {steps}; got "
            f"{save_every}."
        )
    if not (dt > 0) or abs(save_every / dt - round(save_every / dt)) > 1e-9:
        raise ValueError(
            f"--dt {dt} must be positive and divide --save-every {save_every} into a "
            "whole number of solver steps."
        )
    return int(steps), int(save_every)


def build_dynamics(problem, noise, lr, *, save_every, dt=1.0, solver="euler",
                   sme_correction=False, weight_decay=0.0, theta0=None,
                   observables=None) -> SDEDynamics:
    """Assemble the per-path SDE dynamics (validated)."""
    if not isinstance(noise, AbstractNoise):
        raise ValueError(f"noise must be Isotropic, Layerwise or Minibatch; got {noise!r}.")
    noise.check(problem)
    if solver not in SOLVERS:
        raise ValueError(f"--solver {solver!r} is not known; choose one of {list(SOLVERS)}.")
    if not noise.additive and solver != "euler":
        raise ValueError(
            f"--solver {solver} needs additive noise; Minibatch noise is state dependent "
            "and is solved with --solver euler (Euler–Maruyama)."
        )
    if not (weight_decay >= 0):
        raise ValueError(f"--weight-decay must be ≥ 0, got {weight_decay}.")
    dtype = problem.theta0.dtype
    theta_start = problem.theta0 if theta0 is None else jnp.asarray(theta0, dtype)
    if theta_start.shape != problem.theta0.shape:
        raise ValueError(
            f"theta0 has shape {theta_start.shape}; the problem has P = {problem.n_params}."
        )
    drift = Drift(problem, as_learning_rate(lr, dtype), jnp.asarray(weight_decay, dtype),
                  bool(sme_correction))
    if isinstance(noise, (Isotropic, Layerwise)):
        kind, diag, scale, b, a = "additive", noise.diagonal(problem), None, 0, 0.0
    else:
        assert isinstance(noise, Minibatch)
        kind = "reshuffle" if noise.sampling == "reshuffle" else "iid"
        if kind == "reshuffle":
            steps_per_epoch = noise.epoch_length(problem.n_train) / dt
            if abs(steps_per_epoch - round(steps_per_epoch)) > 1e-9:
                raise ValueError(
                    f"--dt {dt} must divide the epoch length N/B = "
                    f"{noise.epoch_length(problem.n_train)} for sampling='reshuffle'."
                )
        diag, scale = None, jnp.asarray(noise.scale, dtype)
        b, a = noise.batch_size, noise.counting_scale(problem.n_train)
    return SDEDynamics(
        drift=drift, diagonal=diag, scale=scale, theta0=theta_start,
        observables=observables or Observables(), noise_kind=kind, batch_size=b,
        counting_scale=a, save_every=float(save_every), dt=float(dt), solver=solver,
    )


def simulate(
    problem: Problem,
    noise: AbstractNoise,
    lr: float | Callable,
    steps: int,
    paths: int,
    key,
    *,
    save_every: int | None = None,
    dt: float = 1.0,
    solver: str = "euler",
    sme_correction: bool = False,
    weight_decay: float = 0.0,
    theta0=None,
    observables: Observables | None = None,
    stats_only: bool = False,
    progress: bool = True,
    seed: int | None = None,
) -> xr.Dataset:
    """Simulate an ensemble of SDE paths of SGD with diffrax.

    Solves dθ = −η(t)[∇F + (η/4)∇‖∇F‖²·1_sme] dt + η(t) D(θ) dW, F = L + (λ/2)‖θ‖²,
    from θ0 over ``steps`` SGD steps (one unit of time = one step) with a fixed step
    ``dt``, and records observables every ``save_every`` steps.

    **Arguments:**

    - `problem`, `noise`: what to train and the noise model (`Isotropic`,
      `Layerwise`, `Minibatch`).
    - `lr`: learning rate η, a float or an optax schedule (a callable of the step).
    - `steps`, `paths`: length and size of the ensemble.
    - `key`: a JAX PRNG key; path i uses fold_in(key, i).
    - `save_every`: record interval in steps (default steps/100).
    - `dt`: solver step in SGD steps (1 = one SGD step); must divide `save_every`.
    - `solver`: "euler" (Euler–Maruyama), or for additive noise "heun", "sra1",
      "shark".
    - `sme_correction`: add the second-order SME drift −(η²/4)∇‖∇F‖².
    - `weight_decay`: λ of the L2 penalty (λ/2)‖θ‖².
    - `theta0`: start from these flat weights instead of the problem's.
    - `observables`: what to record (`Observables`).
    - `stats_only`: keep only the ensemble mean and variance at each save.

    **Returns:** an xarray Dataset (dims `path`, `time`, `train_point`,
    `test_point`; time in SGD steps), config and versions in its attrs.

    **Raises:** `ValueError` for invalid arguments, `DivergenceError` when the loss
    becomes non-finite (naming the step and the stability bound 2/λ_max).
    """
    steps, save_every = _check_times(steps, save_every, dt)
    observables = observables or Observables()
    dynamics = build_dynamics(
        problem, noise, lr, save_every=save_every, dt=dt, solver=solver,
        sme_correction=sme_correction, weight_decay=weight_decay, theta0=theta0,
        observables=observables,
    )
    n_saves = steps // save_every
    hint = _stability_hint(problem, lr, dynamics.theta0)
    out = run_ensemble(dynamics, key, paths, n_saves, save_every,
                       stats_only=stats_only, progress=progress,
                       desc=f"sde {problem.name}", stability_hint=hint)
    config = {
        "kind": "sde",
        "problem": problem.config,
        "noise": noise.to_config(),
        "lr": lr_config(lr),
        "steps": steps,
        "paths": paths,
        "save_every": save_every,
        "dt": dt,
        "solver": solver,
        "sme_correction": bool(sme_correction),
        "weight_decay": float(weight_decay),
        "stats_only": bool(stats_only),
        "observables": observables.to_config(),
        "custom_theta0": theta0 is not None,
    }
    return ensemble_dataset(out, problem, observables, save_every, paths, stats_only,
                            config, seed)


def _stability_hint(problem, lr, theta0):
    """λ_max at the start, computed lazily only when a run diverges."""

    class _Hint(dict):
        def get(self, name, default=None):
            if name == "lambda_max":
                try:
                    return problem.max_curvature(theta0)
                except Exception:  # pragma: no cover - best effort for a message
                    return None
            if name == "lr":
                return None if callable(lr) else float(lr)
            return default

    return _Hint()
