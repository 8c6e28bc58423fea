"""Regime map of the second-order moment closure against SDE Monte Carlo.

Where does the second-order (quadratic Taylor, Gaussian) closure of DESIGN §3 improve
on the first-order (linearised-network) closure, and where does it fail?

For ``mlp-sine`` (tanh, 1 hidden layer of width W, 16 train / 16 test points) with
isotropic noise σ, each regime (W, σ, start) is run from two starts:

- ``init``: the problem's random initialisation θ0;
- ``min``: gradient-descent-converged weights, ``sdenet.trained_weights(p, 0.2, 20000)``
  (falls back to η = 1/λ_max if that diverges).

The learning rate is η = 0.1 unless η·λ_max(∇²L at the start) ≥ 1.8, then
η = 1/λ_max (λ_max from the dense Hessian at the start). Three closures are compared
with the same SDE at every save:

- ``first``: ``sdenet.closure(order=1)`` (frozen NTK at the start, exact for it);
- ``second``: ``order=2, expand="mean", curvature="hessian"``;
- ``gn``: ``order=2, expand="mean", curvature="gauss-newton"`` (a subset of regimes).

**Monte Carlo reference.** ``sdenet.simulate`` (SRA1, dt = 0.5) with *antithetic pairs*:
the second half of the ensemble is the same SDE written in reflected weights θ' = −θ
(a ``Problem`` whose apply negates its parameters), run with the same key. The drift is
odd under the reflection and the noise additive, so path i of that run is the original
SDE driven by −W. The pair mean (f(W) + f(−W))/2 cancels the O(σ) fluctuation and
leaves the O(σ²) noise-induced shift with a much smaller standard error.
E f_0 is a noise-free ``simulate`` with the same settings.

**Metrics** (test outputs, rms over the 16 test points, at every save):

- ``mean_err_se``: |μ_closure − μ_MC| in plain Monte Carlo SEs √(Var f / n_paths), the
  unit of an ordinary n_paths-path ensemble (n_paths = 2 × pairs). The reference's own
  (antithetic) SE in the same unit is ``ref_se`` (a floor for this metric).
- ``var_rel_err``: Var_closure / Var_MC − 1 (its MC floor is ``var_rel_se``).
- shift: the closure's ``test_output_shift`` s (E f_σ − f_{σ=0} of the closure) against
  the MC shift m = E f_σ − E f_0: Pearson correlation over points and the regression
  slope ⟨s, m⟩/⟨m, m⟩ (1 = right magnitude); ``mc_shift_z`` = rms(m)/rms(SE of m).
- per (W, start): the slope of log rms|m| against log σ over the σ grid (≈ 2 where a
  local, Gaussian-closure picture applies), with its MC SE.

The closure's ``ClosureDomainWarning`` messages are recorded per run.

    python experiments/second_order.py [--quick] [--out DIR]
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

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import sdenet  # noqa: E402

NAME = "second_order"
STARTS = ("init", "min")

SIZES = {
    "full": dict(widths=(4, 8, 16), sigmas=(0.01, 0.03, 0.1), starts=STARTS, steps=400,
                 save_every=50, pairs={4: 2000, 8: 1500, 16: 1000}, train_steps=20000,
                 gn_widths=(8,), gn_sigmas=(0.03,), flow_paths=2),
    "quick": dict(widths=(8,), sigmas=(0.01, 0.1), starts=STARTS, steps=200,
                  save_every=50, pairs={8: 500}, train_steps=20000,
                  gn_widths=(), gn_sigmas=(), flow_paths=None),
    "smoke": dict(widths=(4,), sigmas=(0.03, 0.1), starts=("min",), steps=100,
                  save_every=50, pairs={4: 64}, train_steps=2000,
                  gn_widths=(), gn_sigmas=(), flow_paths=None),
}
# flow_paths=None: the noise-free run reuses the ensemble's size (and so its compiled
# code, which is cheaper than a new compilation for small ensembles)
LR = 0.1
TRAIN_LR = 0.2
SDE_DT = 0.5
CLOSURE_DT = 0.5
SEED = 0
METHODS = ("first", "second", "gn")


# ---------------------------------------------------------------- helpers
def _rms(x, axis=-1):
    return np.sqrt(np.mean(np.square(x), axis=axis))


def _clean(x):
    """JSON-safe: NaN/inf → None, numpy → python."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x



def curvature(problem, theta):
    ev = np.linalg.eigvalsh(np.asarray(jax.hessian(problem.loss)(theta)))
    return float(ev[0]), float(ev[-1])


def start_point(problem, start, train_steps):
    if start == "init":
        return problem.theta0, {"train_lr": None}
    try:
        theta = sdenet.trained_weights(problem, TRAIN_LR, train_steps)
        return theta, {"train_lr": TRAIN_LR}
    except ValueError:
        lr = 1.0 / curvature(problem, problem.theta0)[1]
        return sdenet.trained_weights(problem, lr, train_steps), {"train_lr": lr}


def monte_carlo(problem, mirror, theta, sigma, lr, steps, save_every, pairs, key):
    """Antithetic SDE ensemble: test outputs (pairs, T, M) for W and for −W."""
    kw = dict(save_every=save_every, dt=SDE_DT, solver="sra1", stats_only=False,
              progress=False)
    noise = sdenet.Isotropic(sigma)
    plus = sdenet.simulate(problem, noise, lr, steps, pairs, key, theta0=theta, **kw)
    minus = sdenet.simulate(mirror, noise, lr, steps, pairs, key, theta0=-theta, **kw)
    return plus.test_output.values, minus.test_output.values


def mc_moments(fa, fb, f0):
    """Mean, variance, shift and their SEs from antithetic pairs (axis 0)."""
    n = fa.shape[0]
    both = np.concatenate([fa, fb])
    mean = both.mean(0)
    var = both.var(0, ddof=1)
    pair = 0.5 * (fa + fb)
    q = 0.5 * ((fa - mean) ** 2 + (fb - mean) ** 2)
    return {
        "mean": mean, "var": var, "shift": mean - f0, "f0": f0,
        "se_plain": np.sqrt(var / (2 * n)),         # unit of an ordinary 2n-path ensemble
        "se_pair": pair.std(0, ddof=1) / np.sqrt(n),  # actual SE of the mean and shift
        "se_var": q.std(0, ddof=1) / np.sqrt(n),
        # pair correlation of the outputs (−1: fully antithetic)
        "pair_corr": float(np.mean([np.corrcoef(fa[:, -1, j], fb[:, -1, j])[0, 1]
                                    for j in range(fa.shape[2])])),
    }


def run_closure(problem, sigma, lr, steps, save_every, theta, method):
    opts = {} if method == "first" else dict(order=2, expand="mean", dt=CLOSURE_DT,
                                             curvature={"second": "hessian",
                                                        "gn": "gauss-newton"}[method])
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = sdenet.closure(problem, sdenet.Isotropic(sigma), lr, steps,
                            save_every=save_every, theta0=theta, **opts)
    seconds = time.perf_counter() - t
    domain = [str(w.message) for w in caught
              if issubclass(w.category, sdenet.ClosureDomainWarning)]
    out = {"mean": ds.test_output_mean.values, "var": ds.test_output_var.values,
           "seconds": seconds, "domain_warnings": domain}
    if method != "first":
        out["shift"] = ds.test_output_shift.values
        out["curvature_min"] = ds.curvature_min.values
        out["curvature_max"] = ds.curvature_max.values
    return out


def compare(closure, mc):
    """Per-save metrics (saves 1..T; t = 0 is excluded: no variance yet)."""
    sl = slice(1, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = closure["mean"][sl] - mc["mean"][sl]
        res = {
            "mean_err_se": _rms(d / mc["se_plain"][sl]),
            "mean_err_abs": _rms(d),
            "var_rel_err": _rms(closure["var"][sl] / mc["var"][sl] - 1),
            # signed: median over points of Var_closure / Var_MC
            "var_ratio_median": np.median(closure["var"][sl] / mc["var"][sl], axis=-1),
        }
        # the closure's noise-free mean against the noise-free SDE run (same unit):
        # how much of mean_err_se is the deterministic path, not the noise
        flow = closure["mean"][sl] - closure.get("shift", 0.0 * closure["mean"])[sl]
        res["flow_err_se"] = _rms((flow - mc["f0"][sl]) / mc["se_plain"][sl])
        if "shift" in closure:
            s, m = closure["shift"][sl], mc["shift"][sl]
            corr, slope, ratio = [], [], []
            for si, mi in zip(s, m):
                ok = np.all(np.isfinite(si))
                corr.append(np.corrcoef(si, mi)[0, 1] if ok else np.nan)
                slope.append(np.dot(si, mi) / np.dot(mi, mi) if ok else np.nan)
                ratio.append(_rms(si) / _rms(mi) if ok else np.nan)
            res |= {"shift_corr": np.array(corr), "shift_slope": np.array(slope),
                    "shift_rms_ratio": np.array(ratio)}
    return res


def log_slope(sigmas, values, ses):
    """Weighted LS slope of log values vs log σ, SE from the MC errors."""
    x = np.log(np.asarray(sigmas))
    y = np.log(np.asarray(values))
    s = np.asarray(ses) / np.asarray(values)
    if len(x) < 2 or not np.all(np.isfinite(y)):
        return np.nan, np.nan
    w = 1.0 / np.maximum(s, 1e-12) ** 2
    xm = np.sum(w * x) / np.sum(w)
    sxx = np.sum(w * (x - xm) ** 2)
    slope = np.sum(w * (x - xm) * y) / sxx
    # plain (unweighted) slope is reported too: the weighted one leans on small σ
    return slope, math.sqrt(1.0 / sxx)


# ---------------------------------------------------------------- experiment
def run(size):
    cfg = SIZES[size]
    steps, save_every = cfg["steps"], cfg["save_every"]
    times = np.arange(save_every, steps + 1, save_every)
    regimes, groups = [], []
    for width in cfg["widths"]:
        problem = sdenet.get_problem("mlp-sine", width=width, n_train=16, n_test=16)
        mirror = problem.reflected()
        pairs = cfg["pairs"][width]
        for start in cfg["starts"]:
            t0 = time.perf_counter()
            theta, info = start_point(problem, start, cfg["train_steps"])
            lam_min, lam_max = curvature(problem, theta)
            lr = LR if LR * lam_max < 1.8 else 1.0 / lam_max
            key = jax.random.key(SEED)
            flow = sdenet.simulate(problem, sdenet.Isotropic(0.0), lr, steps,
                                   cfg["flow_paths"] or pairs, key,
                                   save_every=save_every, theta0=theta, dt=SDE_DT,
                                   solver="sra1", stats_only=False, progress=False)
            f0 = flow.test_output.values[0]
            group = {"width": width, "start": start, "P": problem.n_params,
                     "lr": lr, "lambda_min": lam_min, "lambda_max": lam_max,
                     "lr_lambda_max": lr * lam_max, "train_loss_start":
                     float(problem.loss(theta)), "pairs": pairs, **info, "regimes": []}
            print(f"W={width} start={start}: P={problem.n_params} λ ∈ [{lam_min:.3g}, "
                  f"{lam_max:.3g}] η={lr:.3g} ηλ_max={lr * lam_max:.2f}", flush=True)
            for sigma in cfg["sigmas"]:
                t1 = time.perf_counter()
                fa, fb = monte_carlo(problem, mirror, theta, sigma, lr, steps,
                                     save_every, pairs, key)
                mc = mc_moments(fa, fb, f0)
                t_mc = time.perf_counter() - t1
                methods = ["first", "second"]
                if width in cfg["gn_widths"] or sigma in cfg["gn_sigmas"]:
                    methods.append("gn")
                row = {"width": width, "start": start, "sigma": sigma, "lr": lr,
                       "paths": 2 * pairs, "mc_seconds": t_mc,
                       "pair_corr": mc["pair_corr"], "methods": {}}
                sl = slice(1, None)
                row["ref_se"] = _rms(mc["se_pair"][sl] / mc["se_plain"][sl])
                row["var_rel_se"] = _rms(mc["se_var"][sl] / mc["var"][sl])
                row["mc_shift_rms"] = _rms(mc["shift"][sl])
                row["mc_shift_se_rms"] = _rms(mc["se_pair"][sl])
                row["mc_shift_z"] = row["mc_shift_rms"] / row["mc_shift_se_rms"]
                row["mc_shift_final"] = mc["shift"][-1]
                row["mc_var_final"] = mc["var"][-1]
                row["mc_mean_final"] = mc["mean"][-1]
                row["f0_final"] = f0[-1]
                for method in methods:
                    c = run_closure(problem, sigma, lr, steps, save_every, theta, method)
                    metrics = compare(c, mc)
                    entry = {k: v for k, v in metrics.items()}
                    entry["seconds"] = c["seconds"]
                    entry["domain_warnings"] = c["domain_warnings"]
                    entry["mean_final"], entry["var_final"] = c["mean"][-1], c["var"][-1]
                    if "shift" in c:
                        entry["shift_final"] = c["shift"][-1]
                        entry["shift_rms"] = _rms(c["shift"][sl])
                        entry["curvature_min"] = c["curvature_min"]
                        entry["curvature_max"] = c["curvature_max"]
                    row["methods"][method] = entry
                m1 = row["methods"]["first"]["mean_err_se"][-1]
                m2 = row["methods"]["second"]["mean_err_se"][-1]
                print(f"  σ={sigma:g}: MC {t_mc:.1f}s, mean err/SE first {m1:.3g} "
                      f"second {m2:.3g}, shift corr "
                      f"{row['methods']['second']['shift_corr'][-1]:.3f} slope "
                      f"{row['methods']['second']['shift_slope'][-1]:.3f}, flow err/SE "
                      f"first {row['methods']['first']['flow_err_se'][-1]:.3g} second "
                      f"{row['methods']['second']['flow_err_se'][-1]:.3g}, warnings "
                      f"{len(row['methods']['second']['domain_warnings'])}", flush=True)
                group["regimes"].append(row)
                regimes.append(row)
            # σ-scaling of the noise-induced shift (final save)
            sig = [r["sigma"] for r in group["regimes"]]
            mc_final = [r["mc_shift_rms"][-1] for r in group["regimes"]]
            mc_se = [r["mc_shift_se_rms"][-1] for r in group["regimes"]]
            cl_final = [r["methods"]["second"]["shift_rms"][-1] for r in group["regimes"]]
            group["mc_shift_slope"], group["mc_shift_slope_se"] = log_slope(
                sig, mc_final, mc_se)
            group["closure_shift_slope"] = log_slope(sig, cl_final, np.zeros(len(sig)))[0] \
                if len(sig) > 1 else np.nan
            # local slopes between neighbouring σ (the σ → 0 end is the first)
            group["mc_shift_local_slopes"] = [
                math.log(mc_final[i + 1] / mc_final[i]) / math.log(sig[i + 1] / sig[i])
                for i in range(len(sig) - 1)]
            group["closure_shift_local_slopes"] = [
                math.log(cl_final[i + 1] / cl_final[i]) / math.log(sig[i + 1] / sig[i])
                if cl_final[i] > 0 and cl_final[i + 1] > 0 else np.nan
                for i in range(len(sig) - 1)]
            group["seconds"] = time.perf_counter() - t0
            groups.append(group)
    return {"size": size, "config": {k: (v if not isinstance(v, dict) else
                                         {str(a): b for a, b in v.items()})
                                     for k, v in cfg.items()},
            "lr": LR, "sde_dt": SDE_DT, "closure_dt": CLOSURE_DT, "solver": "sra1",
            "times": times, "groups": groups}


# ---------------------------------------------------------------- output
def _warn_code(messages):
    if not messages:
        return "–"
    codes = []
    for m in messages:
        if "diverged" in m:
            codes.append("diverged")
        elif "negative curvature" in m:
            codes.append("neg-curv")
        elif "keeps growing" in m:
            codes.append("C grows")
        else:
            codes.append("other")
    return ", ".join(codes)


def _f(x, fmt=".2f"):
    return "—" if x is None or not np.isfinite(x) else format(x, fmt)


def tables(result):
    lines = [
        "| W | start | σ | ηλ_max | mean err/SE first | second | GN | second/first | "
        "var rel err first | second | GN | MC floor | shift corr (GN) | shift slope (GN) | "
        "MC shift z | warnings (second; GN) |",
        "|" + "---|" * 16,
    ]
    for g in result["groups"]:
        for r in g["regimes"]:
            m = r["methods"]
            gn = m.get("gn")
            e1, e2 = m["first"]["mean_err_se"][-1], m["second"]["mean_err_se"][-1]
            lines.append(
                f"| {r['width']} | {r['start']} | {r['sigma']:g} | "
                f"{g['lr_lambda_max']:.2f} | {_f(e1, '.2f')} | {_f(e2, '.2f')} | "
                f"{_f(gn['mean_err_se'][-1]) if gn else ''} | {_f(e2 / e1, '.2f')} | "
                f"{_f(m['first']['var_rel_err'][-1], '.3f')} | "
                f"{_f(m['second']['var_rel_err'][-1], '.3f')} | "
                f"{_f(gn['var_rel_err'][-1], '.3f') if gn else ''} | "
                f"{_f(r['var_rel_se'][-1], '.3f')} | "
                f"{_f(m['second']['shift_corr'][-1], '.2f')}"
                f"{' (' + _f(gn['shift_corr'][-1], '.2f') + ')' if gn else ''} | "
                f"{_f(m['second']['shift_slope'][-1], '.2f')}"
                f"{' (' + _f(gn['shift_slope'][-1], '.2f') + ')' if gn else ''} | "
                f"{_f(r['mc_shift_z'][-1], '.1f')} | "
                f"{_warn_code(m['second']['domain_warnings'])}"
                f"{'; ' + _warn_code(gn['domain_warnings']) if gn else ''} |")
    scaling = [
        "| W | start | P | λ_min, λ_max at start | MC shift slope vs σ ± SE | local "
        "slopes MC | closure shift slope | local slopes closure | shift slope "
        "(regression) per σ | mean err ratio second/first per σ |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in result["groups"]:
        per = ", ".join(_f(r["methods"]["second"]["shift_slope"][-1], ".2f")
                        for r in g["regimes"])
        rat = ", ".join(_f(r["methods"]["second"]["mean_err_se"][-1]
                           / r["methods"]["first"]["mean_err_se"][-1], ".2f")
                        for r in g["regimes"])
        scaling.append(
            f"| {g['width']} | {g['start']} | {g['P']} | {g['lambda_min']:.3g}, "
            f"{g['lambda_max']:.3g} | {_f(g['mc_shift_slope'])} ± "
            f"{_f(g['mc_shift_slope_se'])} | "
            f"{', '.join(_f(x) for x in g['mc_shift_local_slopes'])} | "
            f"{_f(g['closure_shift_slope'])} | "
            f"{', '.join(_f(x) for x in g['closure_shift_local_slopes'])} | {per} | "
            f"{rat} |")
    return "\n".join(lines), "\n".join(scaling)


def figure(result, path):
    groups = result["groups"]
    sigmas = sorted({r["sigma"] for g in groups for r in g["regimes"]})
    labels = [f"W={g['width']} {g['start']}" for g in groups]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))

    def heat(ax, value, title, cmap, vmin, vmax, fmt):
        grid = np.full((len(groups), len(sigmas)), np.nan)
        for i, g in enumerate(groups):
            for r in g["regimes"]:
                grid[i, sigmas.index(r["sigma"])] = value(r)
        im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                ax.text(j, i, _f(grid[i, j], fmt), ha="center", va="center", fontsize=8,
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", alpha=0.7,
                                  lw=0))
        ax.set_xticks(range(len(sigmas)), [f"σ={s:g}" for s in sigmas])
        ax.set_yticks(range(len(groups)), labels)
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8)

    final = lambda m, k: lambda r: r["methods"][m][k][-1]  # noqa: E731
    heat(axes[0, 0], lambda r: np.log10(final("second", "mean_err_se")(r)
                                        / final("first", "mean_err_se")(r)),
         "log10 mean-error ratio second/first (t = end)", "RdBu_r", -1.5, 1.5, ".2f")
    heat(axes[0, 1], lambda r: np.log10((final("second", "var_rel_err")(r) + 1e-3)
                                        / (final("first", "var_rel_err")(r) + 1e-3)),
         "log10 variance-error ratio second/first (t = end)", "RdBu_r", -1.5, 1.5, ".2f")
    heat(axes[0, 2], final("second", "shift_corr"),
         "shift correlation closure vs MC (t = end)", "viridis", -1, 1, ".2f")

    ax = axes[1, 0]
    colors = {s: c for s, c in zip(sigmas, plt.cm.plasma(np.linspace(0.1, 0.8,
                                                                      len(sigmas))))}
    for g in groups:
        for r in g["regimes"]:
            m = np.asarray(r["mc_shift_final"]) / r["sigma"] ** 2
            s = np.asarray(r["methods"]["second"]["shift_final"]) / r["sigma"] ** 2
            ax.scatter(m, s, s=12, color=colors[r["sigma"]],
                       marker="o" if g["start"] == "min" else "x",
                       alpha=0.8 if g["start"] == "min" else 0.4)
    lim = [np.nanmin([ax.get_xlim()[0], ax.get_ylim()[0]]),
           np.nanmax([ax.get_xlim()[1], ax.get_ylim()[1]])]
    ax.plot(lim, lim, "k--", lw=0.8)
    for s in sigmas:
        ax.scatter([], [], color=colors[s], label=f"σ={s:g}")
    ax.set_xlabel("MC shift (E f_σ − E f_0)/σ²")
    ax.set_ylabel("closure shift / σ²")
    ax.set_title("noise-induced shift, test points, t = end\n(o: near min, x: random init)",
                 fontsize=10)
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    for g in groups:
        sig = [r["sigma"] for r in g["regimes"]]
        y = [r["mc_shift_rms"][-1] for r in g["regimes"]]
        e = [r["mc_shift_se_rms"][-1] for r in g["regimes"]]
        ax.errorbar(sig, y, yerr=e, marker="o" if g["start"] == "min" else "x",
                    ls="-" if g["start"] == "min" else ":",
                    label=f"{g['width']} {g['start']} (slope {_f(g['mc_shift_slope'])})")
    s = np.asarray(sigmas)
    anchor = np.nanmedian([g["regimes"][0]["mc_shift_rms"][-1] for g in groups])
    ax.plot(s, anchor * (s / s[0]) ** 2, "k--", lw=0.8, label="∝ σ²")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("σ")
    ax.set_ylabel("rms MC shift (t = end)")
    ax.set_title("scaling of the Monte Carlo shift with σ", fontsize=10)
    ax.legend(fontsize=7)

    ax = axes[1, 2]
    times = np.asarray(result["times"])
    mid = sigmas[len(sigmas) // 2]
    for k, g in enumerate(groups):
        for r in g["regimes"]:
            if r["sigma"] != mid:
                continue
            for method, ls in (("first", ":"), ("second", "-")):
                ax.plot(times, r["methods"][method]["mean_err_se"], ls=ls,
                        color=plt.cm.tab10(k % 10),
                        marker="o" if g["start"] == "min" else "x",
                        label=f"{method} W={g['width']} {g['start']}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("rms mean error / MC SE")
    ax.set_title(f"mean error over time, σ = {mid:g}", fontsize=10)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced run (< 1 min)")
    parser.add_argument("--smoke", action="store_true", help="tiny run for the tests")
    parser.add_argument("--out", default=f"experiments/out/{NAME}")
    args = parser.parse_args(argv)
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = run(size)
    result["seconds"] = time.perf_counter() - t0
    regime_table, scaling_table = tables(result)
    result["tables"] = {"regimes": regime_table, "scaling": scaling_table}
    figure(result, out / f"{NAME}.png")
    (out / f"{NAME}.json").write_text(json.dumps(_clean(result), indent=1))
    print()
    print(regime_table)
    print()
    print(scaling_table)
    print(f"\n{size} run: {result['seconds']:.0f} s; wrote {out / NAME}.json and .png")
    return result


if __name__ == "__main__":
    main()
