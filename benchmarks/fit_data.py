"""Training logs from real SGD for the inference benchmarks (`sdenet.sgd`, optax).

The standard case of issue 4: problem ``linear`` with N = 512 training points (so the
finite-population factor κ(B) = (N − B)/(N − 1) stays within 3% of 1 and the iid floor
scales as η/B), 3 learning rates × 3 batch sizes × 4 seeds = 36 runs, 3000 steps
logged every 10 steps (300 points after t = 0) of the full-batch train loss.
"""

from __future__ import annotations

import jax
import numpy as np

import sdenet

LRS = (0.01, 0.02, 0.04)
BATCH_SIZES = (4, 8, 16)


def standard_problem(n_train=512):
    return sdenet.get_problem("linear", n_train=n_train, n_test=64)


def sgd_runs(problem, *, sampling="iid", lrs=LRS, batch_sizes=BATCH_SIZES, seeds=4,
             steps=3000, save_every=10, seed=0, start=1):
    """Runs (`sdenet.Run`) of real SGD at every (η, B); ``seeds`` runs per pair.

    ``start``: the first logged step (1 skips t = 0, where every run has the same loss).
    """
    obs = sdenet.Observables(train_points=(), test_points=())
    runs = []
    key = jax.random.key(seed)
    for i, lr in enumerate(lrs):
        for j, b in enumerate(batch_sizes):
            ds = sdenet.sgd(problem, b, lr, steps, seeds,
                            jax.random.fold_in(key, 100 * i + j), sampling=sampling,
                            save_every=save_every, observables=obs, progress=False)
            t = ds.time.values
            keep = t >= start
            for k in range(seeds):
                runs.append(sdenet.Run(f"lr{lr}-B{b}-s{k}", t[keep].astype(float),
                                       np.asarray(ds.train_loss.values[k][keep]), None,
                                       {"lr": lr, "batch_size": b, "sampling": sampling}))
    return runs
