"""Noise level, loss-Hessian curvature at the end of training, and generalisation.

The paper's third finding: the noise changes the Hessian of the loss, and flatter minima
(smaller tr ∇²L) generalise better. Here ``mlp-sine`` (tanh, 1 hidden layer of width
W = 16, N = 32 train / 64 test points, P = 49) is trained from its random θ0 for T steps
at a fixed η over a grid of noise levels:

- real minibatch SGD (``sdenet.sgd``, iid batches) with B ∈ {1, 2, 4, 8, 16, 32}; B = N is
  full-batch gradient descent (no noise); the noise temperature of SGD is ∝ η/B;
- the isotropic SDE (``sdenet.simulate``, Euler–Maruyama, dt = 1) with σ ∈ {0.003, 0.01,
  0.03} (σ = 0 is the same gradient descent).

At the end of every run the exact loss Hessian ∇²L(θ_T) (dense, jax.hessian) gives
tr ∇²L and λ_max; ``Problem.max_curvature`` (power iteration, 50 Hessian–vector
products from the all-ones vector) is checked against λ_max on the first run of every
grid point (power iteration finds the eigenvalue of largest *magnitude*).

The second-order closure (``closure(order=2, expand="mean")``, DESIGN §3) predicts, for
the same noise, the expected Hessian trace under its Gaussian weight law
``hessian_trace_mean`` = tr E∇²L with

    E ∇²L = (1/N) Σ_i [ a_i a_iᵀ + H_i C H_i + (r_i + ½ tr(H_i C)) H_i ],

and the expected train / test losses (1/2n) Σ [(E f_i − y_i)² + Var f_i].

Generalisation gap = L_test − L_train (per run; mean ± SE over runs). The Spearman rank
correlation (scipy.stats.spearmanr) between tr ∇²L and L_test (and the gap) is taken
across the grid points (ensemble means) and, pooled, across all individual noisy runs.

    python experiments/hessian.py [--quick] [--out DIR]
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import equinox as eqx  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import sdenet  # noqa: E402

NAME = "hessian"
SIZES = {
    "full": dict(width=16, n_train=32, n_test=64, lr=0.1, steps=4000, save_every=200,
                 batch_sizes=(1, 2, 4, 8, 16, 32), sigmas=(0.003, 0.01, 0.03), runs=128),
    "quick": dict(width=16, n_train=32, n_test=64, lr=0.1, steps=1000, save_every=250,
                  batch_sizes=(2, 8, 32), sigmas=(0.01,), runs=64),
    "smoke": dict(width=4, n_train=8, n_test=8, lr=0.1, steps=40, save_every=20,
                  batch_sizes=(2, 8), sigmas=(0.03,), runs=16),
}
SEED = 0
WEIGHTS = sdenet.Observables(train_points=(), test_points=(), weights=True)


def _clean(x):
    """JSON-safe: numpy → python, NaN/inf → None."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


@eqx.filter_jit
def _curvature(problem, thetas):
    """tr ∇²L and its eigenvalues (ascending) for a stack of weight vectors."""
    def one(theta):
        hess = jax.hessian(problem.loss)(theta)
        return jax.numpy.trace(hess), jax.numpy.linalg.eigvalsh(hess)

    return jax.lax.map(one, thetas)


def _mean_se(x):
    x = np.asarray(x, dtype=float)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def measure(problem, ds):
    """End-of-training curvature, losses and gap per run, and their means ± SE."""
    thetas = ds.weights.values[:, -1]  # (runs, P) at t = T
    trace, eig = (np.asarray(v) for v in _curvature(problem, thetas))
    train = ds.train_loss.values[:, -1]
    test = ds.test_loss.values[:, -1]
    per_run = dict(trace=trace, lambda_max=eig[:, -1], lambda_min=eig[:, 0],
                   train_loss=train, test_loss=test, gap=test - train)
    out = {k: _mean_se(v) for k, v in per_run.items()}
    power = problem.max_curvature(thetas[0])
    out["power_iteration_run0"] = power
    out["eig_max_abs_run0"] = float(eig[0, np.argmax(np.abs(eig[0]))])
    out["train_loss_curve"] = ds.train_loss.values.mean(0)
    out["test_loss_curve"] = ds.test_loss.values.mean(0)
    out["diverged"] = int(np.sum(~np.isfinite(train)))
    return out, per_run


def run_closure(problem, noise, cfg):
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = sdenet.closure(problem, noise, cfg["lr"], cfg["steps"], order=2,
                            expand="mean", save_every=cfg["save_every"])
    tr, te = ds.train_loss_mean.values, ds.test_loss_mean.values
    return dict(trace=float(ds.hessian_trace_mean.values[-1]),
                lambda_max=float(ds.curvature_max.values[-1]),
                train_loss=float(tr[-1]), test_loss=float(te[-1]),
                gap=float(te[-1] - tr[-1]), trace_curve=ds.hessian_trace_mean.values,
                warnings=[str(w.message) for w in caught], seconds=time.perf_counter() - t)


def spearman(x, y):
    r = spearmanr(x, y)
    return dict(rho=float(r.statistic), p=float(r.pvalue), n=len(x))


def run(size, log=print):
    cfg = SIZES[size]
    t_start = time.perf_counter()
    problem = sdenet.get_problem("mlp-sine", width=cfg["width"], n_train=cfg["n_train"],
                                 n_test=cfg["n_test"], seed=SEED)
    n, lr, steps = problem.n_train, cfg["lr"], cfg["steps"]
    kw = dict(save_every=cfg["save_every"], observables=WEIGHTS, progress=False)
    lam0 = problem.max_curvature()
    info = dict(problem=problem.config, P=problem.n_params, lr=lr, steps=steps,
                lambda_max0=lam0, lr_lambda_max0=lr * lam0, loss0=float(problem.loss(
                    problem.theta0)), times=np.arange(0, steps + 1, cfg["save_every"]))
    log(f"P={problem.n_params}, λ_max(θ0) = {lam0:.3g}, ηλ_max = {lr * lam0:.2f}",
        flush=True)
    grid, pooled = [], {"trace": [], "test_loss": [], "gap": [], "kind": []}
    points = [("sgd", b) for b in cfg["batch_sizes"]] + [("sde", s) for s in cfg["sigmas"]]
    for k, (kind, level) in enumerate(points):
        t0 = time.perf_counter()
        key = jax.random.key(SEED + k)
        if kind == "sgd":
            ds = sdenet.sgd(problem, level, lr, steps, cfg["runs"], key, **kw)
            noise = sdenet.Minibatch(level)
            temperature = lr / level * (n - level) / (n - 1)  # η κ / B
        else:
            ds = sdenet.simulate(problem, sdenet.Isotropic(level), lr, steps,
                                 cfg["runs"], key, **kw)
            noise = sdenet.Isotropic(level)
            temperature = None
        mc, per_run = measure(problem, ds)
        if not (kind == "sgd" and level == n):  # noisy runs only (GD is one point)
            for name in ("trace", "test_loss", "gap"):
                pooled[name] += list(per_run[name])
            pooled["kind"] += [kind] * len(per_run["trace"])
        cl = run_closure(problem, noise, cfg)
        row = dict(kind=kind, level=level, temperature=temperature, runs=cfg["runs"],
                   mc=mc, closure=cl, seconds=time.perf_counter() - t0)
        grid.append(row)
        log(f"  {kind} {'B' if kind == 'sgd' else 'σ'}={level}: tr∇²L MC "
            f"{mc['trace'][0]:.4g} ± {mc['trace'][1]:.2g}, closure {cl['trace']:.4g}; "
            f"test {mc['test_loss'][0]:.4g}"
            f", gap {mc['gap'][0]:.4g} ± {mc['gap'][1]:.2g} ({row['seconds']:.0f} s)",
            flush=True)
    corr = {}
    for sel in ("sgd", "sde", "all"):
        rows = [r for r in grid if sel in ("all", r["kind"])]
        if len(rows) < 3:
            continue
        for src in ("mc", "closure"):
            tr = [r[src]["trace"][0] if src == "mc" else r[src]["trace"] for r in rows]
            for target in ("test_loss", "gap"):
                y = [r[src][target][0] if src == "mc" else r[src][target] for r in rows]
                corr[f"{sel}/{src}/trace~{target}"] = spearman(tr, y)
        # noise level against curvature (noise increases as B decreases)
        if sel == "sgd":
            corr["sgd/mc/(1/B)~trace"] = spearman([-r["level"] for r in rows],
                                                  [r["mc"]["trace"][0] for r in rows])
        if sel == "sde":
            corr["sde/mc/σ~trace"] = spearman([r["level"] for r in rows],
                                             [r["mc"]["trace"][0] for r in rows])
    ok = np.isfinite(pooled["trace"]) & np.isfinite(pooled["test_loss"])
    if ok.sum() > 2:
        tr, te, gap = (np.asarray(pooled[k])[ok] for k in ("trace", "test_loss", "gap"))
        corr["pooled runs/trace~test_loss"] = spearman(tr, te)
        corr["pooled runs/trace~gap"] = spearman(tr, gap)
    return dict(size=size, config=cfg, info=info, grid=grid, spearman=corr,
                seconds=time.perf_counter() - t_start)


def _label(r):
    return f"SGD B={r['level']}" if r["kind"] == "sgd" else f"SDE σ={r['level']}"


def tables(res):
    lines = ["| noise | η κ/B | tr ∇²L MC (T) | closure | λ_max MC | run 0: power it. / "
             "eigvalsh | L_train MC | L_test MC | gap MC | L_test closure | gap closure |",
             "|" + "---|" * 11]
    for r in res["grid"]:
        m, c = r["mc"], r["closure"]
        pm = lambda v: f"{v[0]:.4g} ± {v[1]:.1g}"  # noqa: E731
        temp = "" if r["temperature"] is None else f"{r['temperature']:.3g}"
        lines.append(f"| {_label(r)} | {temp} | {pm(m['trace'])} | {c['trace']:.4g} | "
                     f"{pm(m['lambda_max'])} | {m['power_iteration_run0']:.6g} / "
                     f"{m['eig_max_abs_run0']:.6g} | "
                     f"{pm(m['train_loss'])} | {pm(m['test_loss'])} | {pm(m['gap'])} | "
                     f"{c['test_loss']:.4g} | {c['gap']:.4g} |")
    corr = ["| Spearman (grid: ensemble means) | ρ | p | n |", "|---|---|---|---|"]
    for name, v in res["spearman"].items():
        corr.append(f"| {name} | {v['rho']:.3f} | {v['p']:.3g} | {v['n']} |")
    return "\n".join(lines), "\n".join(corr)


def figure(res, path):
    grid = res["grid"]
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.8))
    for r in grid:
        m, c = r["mc"], r["closure"]
        mk = "o" if r["kind"] == "sgd" else "s"
        h = ax[0].errorbar(m["trace"][0], m["test_loss"][0], xerr=m["trace"][1],
                           yerr=m["test_loss"][1], marker=mk, ls="none", label=_label(r))
        ax[0].plot(c["trace"], c["test_loss"], marker=mk, mfc="none", ls="none",
                   color=h[0].get_color())
        ax[1].errorbar(m["trace"][0], m["gap"][0], xerr=m["trace"][1], yerr=m["gap"][1],
                       marker=mk, ls="none", color=h[0].get_color())
        ax[1].plot(c["trace"], c["gap"], marker=mk, mfc="none", ls="none",
                   color=h[0].get_color())
    sp = res["spearman"]
    for a, target in ((ax[0], "test_loss"), (ax[1], "gap")):
        s = sp.get(f"all/mc/trace~{target}")
        a.set(xlabel="tr ∇²L at T (filled: Monte Carlo, open: second-order closure)",
              ylabel="E L_test" if target == "test_loss" else "E (L_test − L_train)",
              title=f"{target} vs Hessian trace"
              + (f" (Spearman ρ = {s['rho']:.2f}, MC grid)" if s else ""))
    ax[0].legend(fontsize=7)
    sgd = [r for r in grid if r["kind"] == "sgd"]
    temps = [r["temperature"] for r in sgd]
    ax[2].errorbar([max(t, 1e-4) for t in temps], [r["mc"]["trace"][0] for r in sgd],
                   yerr=[r["mc"]["trace"][1] for r in sgd], marker="o", label="tr ∇²L SGD")
    ax[2].plot([max(t, 1e-4) for t in temps], [r["closure"]["trace"] for r in sgd], "o--",
               mfc="none", label="closure (Minibatch)")
    ax2 = ax[2].twinx()
    ax2.errorbar([max(t, 1e-4) for t in temps], [r["mc"]["test_loss"][0] for r in sgd],
                 yerr=[r["mc"]["test_loss"][1] for r in sgd], color="C3", marker="^",
                 label="E L_test SGD")
    ax2.set_ylabel("E L_test", color="C3")
    ax[2].set(xscale="log", xlabel="SGD noise temperature η κ / B (GD plotted at 1e-4)",
              ylabel="tr ∇²L at T", title="SGD: curvature and test loss vs noise")
    ax[2].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run (< 1 min)")
    parser.add_argument("--smoke", action="store_true", help="tiny run for the tests")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / NAME)
    args = parser.parse_args(argv)
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    result = run(size)
    result["versions"] = sdenet.versions()
    grid_table, corr_table = tables(result)
    result["tables"] = {"grid": grid_table, "spearman": corr_table}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(_clean(result), indent=1))
    figure(result, args.out / f"{NAME}.png")
    print(f"\n{grid_table}\n\n{corr_table}\n")
    print(f"{size} run: {result['seconds']:.0f} s; wrote {args.out / NAME}.json and .png")
    return result


if __name__ == "__main__":
    main()
