"""The ensemble driver shared by the SDE simulator and discrete SGD.

A *dynamics* is an equinox module with pure per-path functions (optax-style):

    init(key)              -> state        the state of one path at t = 0
    advance(state, k, key) -> state        one save interval, t_k -> t_{k+1}
    observe(state, key)    -> dict          the observables at the current state

The driver vmaps them over the ``path`` axis (sharded over all local devices when
the number of paths allows), scans over save intervals inside ``jit``, and either
keeps every path or only the ensemble mean and variance at each save, so memory
grows with neither the number of steps nor, in statistics mode, paths × saves.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._errors import DivergenceError


def path_keys(key, paths: int):
    """Per-path keys fold_in(key, i): path i is the same whatever the ensemble size."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(paths))


def shard_paths(tree, paths: int):
    """Place the leading ``path`` axis of every leaf across all local devices."""
    devices = jax.local_devices()
    if len(devices) < 2 or paths % len(devices):
        return tree
    mesh = Mesh(np.asarray(devices), ("path",))
    sharding = NamedSharding(mesh, PartitionSpec("path"))
    return jax.device_put(tree, sharding)


def _reduce(obs: dict) -> dict:
    """Ensemble mean and unbiased variance over the leading path axis."""
    out = {}
    for name, value in obs.items():
        out[name + "_mean"] = jnp.mean(value, axis=0)
        out[name + "_var"] = jnp.var(value, axis=0, ddof=1) if value.shape[0] > 1 \
            else jnp.zeros_like(value[0])
    return out


@eqx.filter_jit
def _init(dynamics, keys):
    state = jax.vmap(dynamics.init)(keys)
    obs = jax.vmap(dynamics.observe)(state, jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys))
    return state, obs


@eqx.filter_jit
def _run_chunk(dynamics, state, k0, keys, length: int, stats_only: bool):
    def body(state, k):
        state = jax.vmap(dynamics.advance, in_axes=(0, None, 0))(state, k, keys)
        okeys = jax.vmap(lambda key: jax.random.fold_in(key, k + 1))(keys)
        obs = jax.vmap(dynamics.observe)(state, okeys)
        if stats_only:
            obs = _reduce(obs)
        return state, obs

    return jax.lax.scan(body, state, k0 + jnp.arange(length))


def _chunk_length(n_saves: int, target_chunks: int = 20) -> int:
    """Largest divisor of n_saves not above ceil(n_saves / target_chunks)."""
    cap = max(1, math.ceil(n_saves / target_chunks))
    for c in range(cap, 0, -1):
        if n_saves % c == 0:
            return c
    return 1


def run_ensemble(
    dynamics: Any,
    key,
    paths: int,
    n_saves: int,
    save_every: float,
    *,
    stats_only: bool = False,
    progress: bool = True,
    desc: str = "simulate",
    stability_hint=None,
) -> dict[str, np.ndarray]:
    """Run ``paths`` independent paths for ``n_saves`` save intervals.

    Returns a dict of numpy arrays with a leading time axis of length n_saves + 1
    (time 0 included), then the path axis unless ``stats_only`` (then ``*_mean`` and
    ``*_var`` over paths).

    Raises `DivergenceError` at the first save where the train loss is not finite.
    """
    if paths < 1:
        raise ValueError(f"--paths must be ≥ 1, got {paths}.")
    if stats_only and paths < 2:
        raise ValueError("statistics mode needs at least 2 paths (for a variance).")
    keys = shard_paths(path_keys(key, paths), paths)
    state, obs0 = _init(dynamics, keys)
    state = shard_paths(state, paths)
    if stats_only:
        obs0 = _reduce(obs0)
    chunks = [jax.tree_util.tree_map(lambda x: np.asarray(x)[None], obs0)]
    length = _chunk_length(n_saves)
    bar = _progress(n_saves, desc, progress)
    k0 = 0
    while k0 < n_saves:
        state, obs = _run_chunk(dynamics, state, jnp.asarray(k0), keys, length,
                                stats_only)
        obs = jax.tree_util.tree_map(np.asarray, obs)
        chunks.append(obs)
        loss = obs["train_loss_mean" if stats_only else "train_loss"]
        bad = ~np.isfinite(loss.reshape(loss.shape[0], -1)).all(axis=1)
        if bad.any():
            k = k0 + int(np.argmax(bad)) + 1
            if bar is not None:
                bar.close()
            raise DivergenceError(k * save_every, stability_hint)
        k0 += length
        if bar is not None:
            bar.update(length)
    if bar is not None:
        bar.close()
    return {name: np.concatenate([c[name] for c in chunks], axis=0)
            for name in chunks[0]}


def _progress(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit="save", file=sys.stderr, leave=False)
