"""`sdenet demo`: the whole story on the built-in default problem, in one command.

1. real SGD (optax) at a grid of learning rates × batch sizes, written as a CSV log;
2. from weights trained near a minimum: real SGD and the Minibatch SDE ensemble
   (diffrax) side by side;
3. first- and second-order moment closures of the same dynamics;
4. a NumPyro fit of the scaling model to the SGD logs (ArviZ posterior);
5. an HTML report with every figure.
"""

from __future__ import annotations

import csv
import os
import sys
import time
import warnings

import jax

DEFAULT_PROBLEM = dict(name="mlp-sine", width=8, n_train=32, n_test=32)


def _log(msg):
    print(f"[sdenet demo] {msg}", file=sys.stderr, flush=True)


def _write_logs(path, datasets):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "step", "loss", "lr", "batch_size", "test_loss"])
        for (lr, b), ds in datasets:
            for k in ds.path.values:
                name = f"lr{lr:g}-B{b}-seed{int(k)}"
                for t, loss, test in zip(ds.time.values, ds.train_loss.sel(path=k).values,
                                         ds.test_loss.sel(path=k).values):
                    w.writerow([name, int(t), f"{loss:.10g}", lr, b, f"{test:.10g}"])
    os.replace(tmp, path)


def demo(out_dir="sdenet-demo", quick=False, seed=0) -> str:
    """Run the demo, write artefacts and ``index.html`` into ``out_dir``; return its path."""
    jax.config.update("jax_enable_x64", True)
    from ._artefact import write_netcdf
    from ._closure import closure
    from ._fit import write_posterior
    from ._fit_logs import fit
    from ._logs import read_logs
    from ._noise import Minibatch
    from ._observables import Observables
    from ._problems import get_problem
    from ._report import report
    from ._sde import simulate
    from ._sgd import sgd
    from ._start import trained_weights

    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    cfg = dict(DEFAULT_PROBLEM)
    problem = get_problem(cfg.pop("name"), **cfg)
    key = jax.random.key(seed)
    runs = 2 if quick else 4
    steps = 1000 if quick else 2000
    lrs, batches = (0.05, 0.1), (4, 16)
    _log(f"problem {problem.name}: N={problem.n_train}, P={problem.n_params}")

    _log(f"1/5 real SGD logs: lr {lrs} × batch size {batches}, {runs} seeds, {steps} steps")
    obs = Observables(train_points=(), test_points=())
    logs = []
    for lr in lrs:
        for b in batches:
            ds = sgd(problem, b, lr, steps, runs, jax.random.fold_in(key, 1000 * b + int(
                lr * 1000)), save_every=10, observables=obs, progress=False, seed=seed)
            logs.append(((lr, b), ds))
    log_path = os.path.join(out_dir, "sgd-logs.csv")
    _write_logs(log_path, logs)

    lr, b = 0.05, 4
    theta = trained_weights(problem, 1.0 / problem.max_curvature(), 5000)
    paths = 64 if quick else 1024
    horizon = 400
    _log(f"2/5 SGD vs SDE from a trained start: lr={lr}, B={b}, {paths} paths, "
         f"{horizon} steps")
    pts = Observables(train_points=tuple(range(0, problem.n_train, 4)),
                      test_points=tuple(range(0, problem.n_test, 4)))
    real = sgd(problem, b, lr, horizon, paths, jax.random.fold_in(key, 1), save_every=20,
               theta0=theta, observables=pts, progress=False, seed=seed)
    sde = simulate(problem, Minibatch(b), lr, horizon, paths, jax.random.fold_in(key, 2),
                   save_every=20, theta0=theta, observables=pts, progress=False,
                   seed=seed)
    files = [write_netcdf(real, os.path.join(out_dir, "sgd.nc")),
             write_netcdf(sde, os.path.join(out_dir, "sde.nc"))]

    _log("3/5 first- and second-order moment closures")
    c1 = closure(problem, Minibatch(b), lr, horizon, save_every=20, theta0=theta)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c2 = closure(problem, Minibatch(b), lr, horizon, save_every=20, theta0=theta,
                     order=2)
    for w in caught:
        _log(f"closure warning: {w.message}")
    files += [write_netcdf(c1, os.path.join(out_dir, "closure-order1.nc")),
              write_netcdf(c2, os.path.join(out_dir, "closure-order2.nc"))]

    _log("4/5 NumPyro fit of the scaling model to the SGD logs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idata = fit(read_logs([log_path]), modes=1 if quick else 2, chains=2,
                    warmup=100 if quick else 250, samples=100 if quick else 250,
                    seed=seed, observation_noise=False)
    for w in caught:
        if "Diagnostic" in type(w.message).__name__:
            _log(f"fit warning: {w.message}")
    post = idata.posterior
    for name in ("alpha", "beta"):
        q = post[name].quantile([0.05, 0.5, 0.95]).values
        _log(f"   {name}: median {q[1]:.3f}, 90% interval [{q[0]:.3f}, {q[2]:.3f}]")
    files.append(write_posterior(idata, os.path.join(out_dir, "posterior.nc")))

    _log("5/5 report")
    index = report(files, out_dir, title="sdenet demo: SGD noise on a small MLP")
    _log(f"done in {time.perf_counter() - start:.0f} s: open {index}")
    return index
