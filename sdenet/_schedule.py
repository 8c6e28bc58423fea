"""Learning rates: a constant η or an optax schedule η(step)."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ("constant", "cosine", "exponential", "warmup-cosine")


def as_learning_rate(lr, dtype):
    """A constant becomes a (traced) array, a schedule stays a callable of the step."""
    if callable(lr):
        return lr
    value = float(lr)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {lr}.")
    return jnp.asarray(value, dtype)


def lr_config(lr) -> dict:
    """A JSON description of a learning rate (schedules by their config if known)."""
    if callable(lr):
        cfg = getattr(lr, "sdenet_config", None)
        return cfg if cfg is not None else {"schedule": repr(lr)}
    return {"schedule": "constant", "lr": float(lr)}


def make_schedule(name: str, lr: float, steps: int, final_fraction: float = 0.1
                  ) -> float | Callable:
    """The named optax schedule peaking at ``lr`` over ``steps`` SGD steps.

    - constant:       η(k) = lr
    - cosine:         optax.cosine_decay_schedule(lr, steps, alpha=final_fraction)
    - exponential:    η(k) = lr · final_fraction^(k/steps)
    - warmup-cosine:  linear warm-up over steps/10, then cosine decay
    """
    lr = float(as_learning_rate(lr, jnp.float32))
    if name == "constant":
        return lr
    if name == "cosine":
        fn = optax.cosine_decay_schedule(lr, steps, alpha=final_fraction)
    elif name == "exponential":
        fn = optax.exponential_decay(lr, steps, final_fraction)
    elif name == "warmup-cosine":
        fn = optax.warmup_cosine_decay_schedule(
            0.0, lr, max(1, steps // 10), steps, end_value=lr * final_fraction
        )
    else:
        raise ValueError(f"--schedule {name!r} is not known; choose one of {SCHEDULES}.")

    def schedule(count):
        return fn(count)

    schedule.sdenet_config = {"schedule": name, "lr": lr, "steps": steps,
                              "final_fraction": final_fraction}
    return schedule
