"""Time to accuracy of the moment closure against SDE ensembles.

For each case (problem, start, σ, η, horizon) this measures

- the wall time of ``sdenet.closure`` (first order; second order with
  ``expand="mean", curvature="hessian"``), one save at the end of the horizon;
- the closure's **error** on the test outputs at the end of the horizon against a
  reference: the exact solution where the closure is exact (first order on ``linear``:
  an Ornstein–Uhlenbeck process), else a large *antithetic* SDE ensemble (SRA1,
  dt = 0.5; pairs driven by W and −W, see experiments/second_order.py);
- the size n of a plain SDE ensemble (same solver and dt) whose Monte Carlo standard
  error equals that error, for the mean, n_mean = mean_i Var f_i / e², e² the mean
  squared error over the test points, and for the variance, n_var = 2/ε² + 1 (ε the rms
  relative error of the output variances; a Gaussian output has relative SE
  √(2/(n−1)) on its sample variance). The measured error includes the reference's own
  Monte Carlo error, so e and ε are *upper* estimates and n is conservative (too small);
  a corrected n (reference noise subtracted in quadrature) is reported too;
- the wall time of an ensemble of n paths (``stats_only=True``): measured directly when
  n ≤ 4000, otherwise the 1000-path time scaled linearly (both stated in the table);
- the time of a 1000-path ensemble, and peak memory (VmHWM from /proc/self/status of a
  fresh subprocess that runs just that one call).

Times are warm (the fastest of the repeated calls after the first, compilation
excluded) unless marked cold: the closures are compiled once per problem and array
shapes (σ, η, dt and the start are traced), so a warm call is what a σ sweep or a
second call on the same problem costs. The machine is shared: timings vary by tens
of %.

    python benchmarks/closure.py [--quick] [--out FILE.json] [--no-memory]
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import sdenet  # noqa: E402

SDE_DT = 0.5
SOLVER = "sra1"
DIRECT_MAX = 4000

CASES = {
    "full": [
        dict(name="linear σ=0.1", problem="linear", options={}, start="init", sigma=0.1,
             lr=0.05, steps=400, methods=[("first", {})], reference="exact"),
        dict(name="mlp-sine W=16 min σ=0.01", problem="mlp-sine",
             options=dict(width=16, n_train=16, n_test=16), start="min", sigma=0.01,
             lr=0.1, steps=400, reference=4000,
             methods=[("first", {}), ("second", dict(dt=1.0))]),
        dict(name="mlp-sine W=16 min σ=0.03", problem="mlp-sine",
             options=dict(width=16, n_train=16, n_test=16), start="min", sigma=0.03,
             lr=0.1, steps=400, reference=4000,
             methods=[("first", {}), ("second", dict(dt=1.0))]),
        dict(name="mlp-sine W=165 min σ=0.03", problem="mlp-sine",
             options=dict(width=165, n_train=16, n_test=16), start="min", sigma=0.03,
             lr=None, steps=200, reference=1000,
             methods=[("first", {}), ("second", dict(dt=1.0)),
                      ("second", dict(dt=10.0)), ("second", dict(dt=50.0))]),
    ],
    "quick": [
        dict(name="linear σ=0.1", problem="linear", options={}, start="init", sigma=0.1,
             lr=0.05, steps=200, methods=[("first", {})], reference="exact"),
        dict(name="mlp-sine W=40 min σ=0.03", problem="mlp-sine",
             options=dict(width=40, n_train=16, n_test=16), start="min", sigma=0.03,
             lr=None, steps=100, reference=500,
             methods=[("first", {}), ("second", dict(dt=10.0))]),
    ],
}


def vm_hwm_mib():
    """Peak resident set size of this process (VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------- building blocks
def build(case):
    problem = sdenet.get_problem(case["problem"], **case["options"])
    if case["start"] == "init":
        theta = problem.theta0
    else:
        # as experiments/second_order.py: GD at η = 0.2, or 1/λ_max(θ0) if that diverges
        try:
            theta = sdenet.trained_weights(problem, 0.2, 20000)
        except ValueError:
            theta = sdenet.trained_weights(problem, 1.0 / problem.max_curvature(), 20000)
    lam = problem.max_curvature(theta)
    lr = case["lr"] if case["lr"] is not None else 1.0 / lam
    if lr * lam >= 1.8:
        lr = 1.0 / lam
    return problem, theta, lr, lam


def closure_call(problem, theta, case, lr, method, opts):
    kw = dict(save_every=case["steps"], theta0=theta)
    if method == "second":
        # with_shift=False: skip the closure's second, noise-free integration (only
        # needed for test_output_shift, which this benchmark does not use)
        kw |= dict(order=2, expand="mean", curvature="hessian", with_shift=False, **opts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = sdenet.closure(problem, sdenet.Isotropic(case["sigma"]), lr, case["steps"],
                            **kw)
        ds.test_output_mean.values  # noqa: B018 (materialise)
    domain = [str(w.message) for w in caught
              if issubclass(w.category, sdenet.ClosureDomainWarning)]
    return ds, domain


def ensemble_call(problem, theta, case, lr, paths, key, stats_only=True, dt=SDE_DT,
                  solver=SOLVER):
    return sdenet.simulate(problem, sdenet.Isotropic(case["sigma"]), lr, case["steps"],
                           paths, key, save_every=case["steps"], theta0=theta, dt=dt,
                           solver=solver, stats_only=stats_only, progress=False)



def reference(problem, theta, case, lr):
    """Mean, variance (test outputs at the end) and their SEs, + the wall time."""
    t = time.perf_counter()
    if case["reference"] == "exact":
        ds, _ = closure_call(problem, theta, case, lr, "first", {})
        mean, var = ds.test_output_mean.values[-1], ds.test_output_var.values[-1]
        return dict(kind="exact (first-order closure = OU solution)", mean=mean, var=var,
                    se_mean=np.zeros_like(mean), se_var=np.zeros_like(var),
                    seconds=time.perf_counter() - t, pairs=0)
    pairs = case["reference"]
    key = jax.random.key(7)
    fa = ensemble_call(problem, theta, case, lr, pairs, key, False).test_output.values
    fb = ensemble_call(problem.reflected(), -theta, case, lr, pairs, key,
                       False).test_output.values
    fa, fb = fa[:, -1], fb[:, -1]
    both = np.concatenate([fa, fb])
    mean, var = both.mean(0), both.var(0, ddof=1)
    q = 0.5 * ((fa - mean) ** 2 + (fb - mean) ** 2)
    pair_corr = float(np.mean([np.corrcoef(fa[:, j], fb[:, j])[0, 1]
                               for j in range(fa.shape[1])]))
    return dict(kind=f"antithetic SDE ensemble, {pairs} pairs ({2 * pairs} paths)",
                mean=mean, var=var, pairs=pairs, pair_corr=pair_corr,
                se_mean=(0.5 * (fa + fb)).std(0, ddof=1) / math.sqrt(pairs),
                se_var=q.std(0, ddof=1) / math.sqrt(pairs),
                seconds=time.perf_counter() - t)


def accuracy(ds, ref):
    mu, v = ds.test_output_mean.values[-1], ds.test_output_var.values[-1]
    e2 = float(np.mean((mu - ref["mean"]) ** 2))
    e2_ref = float(np.mean(ref["se_mean"] ** 2))
    rel2 = float(np.mean((v / ref["var"] - 1) ** 2))
    rel2_ref = float(np.mean((ref["se_var"] / ref["var"]) ** 2))
    var_mean = float(np.mean(ref["var"]))

    n_mean = var_mean / e2 if e2 > 0 else math.inf
    e2c = e2 - e2_ref
    n_mean_c = var_mean / e2c if e2c > 0 else math.inf
    n_var = 2.0 / rel2 + 1 if rel2 > 0 else math.inf
    rel2c = rel2 - rel2_ref
    n_var_c = 2.0 / rel2c + 1 if rel2c > 0 else math.inf
    return dict(err_mean=math.sqrt(e2), err_mean_ref_se=math.sqrt(e2_ref),
                err_mean_over_sd=math.sqrt(e2 / var_mean),
                rel_err_var=math.sqrt(rel2), rel_err_var_ref_se=math.sqrt(rel2_ref),
                n_mean=n_mean, n_mean_corrected=n_mean_c,
                n_var=n_var, n_var_corrected=n_var_c,
                resolved_mean=bool(e2 > 4 * e2_ref), resolved_var=bool(rel2 > 4 * rel2_ref))


def timed(fn, repeats=2):
    """(cold, warm) wall times of fn(); warm = min over the repeats after the first."""
    t = time.perf_counter()
    out = fn()
    cold = time.perf_counter() - t
    warm = math.inf
    for _ in range(repeats - 1):
        t = time.perf_counter()
        out = fn()
        warm = min(warm, time.perf_counter() - t)
    return out, cold, (warm if repeats > 1 else cold)


def memory_probe(spec_path):
    """Subprocess entry: run one call, print VmHWM before and after as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    case = spec["case"]
    problem = sdenet.get_problem(case["problem"], **case["options"])
    theta = np.load(spec["theta"])
    before = vm_hwm_mib()
    if spec["what"] == "ensemble":
        ensemble_call(problem, theta, case, spec["lr"], spec["paths"],
                      jax.random.key(0)).test_output_mean.values  # noqa: B018
    else:
        closure_call(problem, theta, case, spec["lr"], spec["what"], spec["opts"])
    print(json.dumps({"before": before, "after": vm_hwm_mib()}))


def probe(case, theta, lr, what, opts=None, paths=None):
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "theta.npy", np.asarray(theta))
        spec = dict(case=case, theta=str(Path(tmp) / "theta.npy"), lr=lr, what=what,
                    opts=opts or {}, paths=paths)
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        out = subprocess.run([sys.executable, __file__, "--memory-probe",
                              str(Path(tmp) / "spec.json")], capture_output=True,
                             text=True, env=env, timeout=1800)
    if out.returncode != 0:
        return {"error": out.stderr[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- benchmark
def run_case(case, memory, log):
    t_case = time.perf_counter()
    problem, theta, lr, lam = build(case)
    log(f"{case['name']}: P={problem.n_params} η={lr:.4g} ηλ_max={lr * lam:.2f}")
    ref = reference(problem, theta, case, lr)
    log(f"  reference: {ref['kind']} ({ref['seconds']:.1f} s)")
    key = jax.random.key(1)
    ens, cold_1000, warm_1000 = timed(
        lambda: ensemble_call(problem, theta, case, lr, 1000, key), 3)
    # calibration check of the n = Var/e² logic: the 1000-path ensemble's own error
    # against the reference, in its own SE (≈ 1 expected)
    ens_err = float(np.sqrt(np.mean((ens.test_output_mean.values[-1] - ref["mean"]) ** 2)))
    ens_se = float(np.sqrt(np.mean(ref["var"]) / 1000))
    log(f"  1000-path ensemble: cold {cold_1000:.2f} s, warm {warm_1000:.2f} s; its "
        f"mean error {ens_err / ens_se:.2f} of its SE")
    # for scale only: the cheapest solver (Euler–Maruyama, dt = 1, one drift evaluation
    # per SGD step); not the reference's discretisation, so not used for accuracy
    _, _, warm_euler = timed(lambda: ensemble_call(problem, theta, case, lr, 1000, key,
                                                   dt=1.0, solver="euler"))
    log(f"  1000-path Euler dt=1 ensemble: warm {warm_euler:.2f} s")
    ens_cache = {1000: (cold_1000, warm_1000)}

    def ensemble_time(n):
        n = max(int(math.ceil(n)), 2)
        if n > DIRECT_MAX:
            return warm_1000 * n / 1000, cold_1000 - warm_1000 + warm_1000 * n / 1000, \
                "scaled from 1000"
        if n not in ens_cache:
            _, c, w = timed(lambda: ensemble_call(problem, theta, case, lr, n, key))
            ens_cache[n] = (c, w)
        return ens_cache[n][1], ens_cache[n][0], "measured"

    rows = []
    for method, opts in case["methods"]:
        repeats = 3 if method == "first" else 2
        (ds, domain), cold, warm = timed(
            lambda: closure_call(problem, theta, case, lr, method, opts), repeats)
        acc = accuracy(ds, ref)
        row = dict(case=case["name"], problem=case["problem"], P=problem.n_params,
                   sigma=case["sigma"], lr=lr, lr_lambda_max=lr * lam, steps=case["steps"],
                   method=method, options=opts, closure_cold=cold, closure_warm=warm,
                   domain_warnings=domain, reference=ref["kind"],
                   reference_pair_corr=ref.get("pair_corr"), ensemble_1000_warm=warm_1000,
                   ensemble_1000_cold=cold_1000, speedup_vs_1000=warm_1000 / warm,
                   ensemble_1000_euler_dt1_warm=warm_euler,
                   ensemble_1000_err_over_se=ens_err / ens_se,
                   speedup_vs_1000_euler_dt1=warm_euler / warm,
                   speedup_vs_1000_cold=cold_1000 / cold, **acc)
        for which in ("n_mean", "n_var"):
            n = acc[which]
            if math.isinf(n):
                row[f"{which}_time"], row[f"{which}_how"] = math.inf, "n = ∞"
            else:
                w, c, how = ensemble_time(n)
                row[f"{which}_time"], row[f"{which}_time_cold"] = w, c
                row[f"{which}_how"] = how
            row[f"speedup_{which}"] = row[f"{which}_time"] / warm
        if memory:
            row["memory_closure"] = probe(case, theta, lr, method, opts)
        log(f"  {method} {opts}: closure {warm:.3g} s (cold {cold:.3g} s); err mean "
            f"{acc['err_mean']:.3g} (ref SE {acc['err_mean_ref_se']:.2g}) → n_mean "
            f"{acc['n_mean']:.3g}; var rel err {acc['rel_err_var']:.3g} → n_var "
            f"{acc['n_var']:.3g}; ×{row['speedup_vs_1000']:.1f} vs 1000 paths")
        rows.append(row)
    if memory:
        mem = probe(case, theta, lr, "ensemble", paths=1000)
        for row in rows:
            row["memory_ensemble_1000"] = mem
    return rows, time.perf_counter() - t_case


def _g(x, fmt=".3g"):
    if x is None:
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return format(x, fmt)


def _n_cell(r, which):
    n, resolved = r[which], r[f"resolved_{which[2:]}"]
    return f"{'' if resolved or math.isinf(n) else '≥ '}{_g(n)}"


def _time_cell(r, which):
    scaled = " scaled" if r[f"{which}_how"] == "scaled from 1000" else ""
    return f"{_g(r[f'{which}_time'])}{scaled}"


def table(rows):
    head = ("| case | P | method | closure s | 1000-path s | × vs 1000 | err mean "
            "(ref SE) | n_mean (corr.) | ens(n_mean) s | × | var rel err (ref SE) | "
            "n_var | ens(n_var) s | × | peak MiB closure / ens 1000 | warnings |")
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        opt = f" dt={r['options']['dt']:g}" if r["options"] else ""
        closure = f"{r['closure_warm']:.3g}"
        closure += f" (cold {r['closure_cold']:.2g})"
        mc = r.get("memory_closure", {})
        me = r.get("memory_ensemble_1000", {})
        mem = (f"{_g(mc.get('after'), '.0f')} / {_g(me.get('after'), '.0f')}"
               if mc else "—")
        cells = [
            r["case"], r["P"], r["method"] + opt, closure,
            f"{r['ensemble_1000_warm']:.3g}", f"{r['speedup_vs_1000']:.1f}",
            f"{r['err_mean']:.2g} ({r['err_mean_ref_se']:.1g})",
            f"{_n_cell(r, 'n_mean')} ({_g(r['n_mean_corrected'])})",
            _time_cell(r, "n_mean"), _g(r["speedup_n_mean"]),
            f"{r['rel_err_var']:.2g} ({r['rel_err_var_ref_se']:.1g})",
            _n_cell(r, "n_var"), _time_cell(r, "n_var"), _g(r["speedup_n_var"]), mem,
            "; ".join(r["domain_warnings"]) or "–",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else str(float(x))
    if isinstance(x, np.integer):
        return int(x)
    return x


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="write every number to this JSON")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        return memory_probe(args.memory_probe)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    rows, seconds = [], {}
    for case in CASES["quick" if args.quick else "full"]:
        r, s = run_case(case, not args.no_memory, log)
        rows += r
        seconds[case["name"]] = s
    text = table(rows)
    second = [r for r in rows if r["method"] == "second" and r["P"] >= 400]
    targets = {
        "first >= 100x vs 1000 paths": [round(r["speedup_vs_1000"], 1) for r in
                                        [x for x in rows if x["method"] == "first"]],
        "second (P >= 400) >= 10x vs 1000 paths": [round(r["speedup_vs_1000"], 2)
                                                   for r in second],
    }
    print(text)
    print()
    for k, v in targets.items():
        print(f"target {k}: {v}")
    total = time.perf_counter() - t0
    print(f"total benchmark time {total:.0f} s")
    result = dict(rows=rows, targets=targets, seconds=seconds, total_seconds=total,
                  sde_dt=SDE_DT, solver=SOLVER, table=text)
    if args.out:
        Path(args.out).write_text(json.dumps(_clean(result), indent=1))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
