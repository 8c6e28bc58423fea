"""Throughput and memory benchmark of the sdenet SDE ensemble engine (CPU, float32).

For a few (N, P, paths) configurations of the built-in ``teacher-student`` problem and
for both Minibatch (iid) and Isotropic noise, this measures

1. the diffrax engine, ``sdenet.simulate(..., stats_only=True)`` with Euler and dt = 1:
   path-steps/s and achieved GFLOP/s, counting 6·N·P flops per path-step (forward
   2NP + backward 4NP); the compile time (first call minus steady state) separately;
2. a hand-written baseline doing the same math in one jitted function (``vmap`` over
   paths, ``lax.scan`` over steps), with the same per-save ensemble mean/variance of
   the observables, so the work is comparable;
3. a jitted float32 1024×1024 matmul peak measured in the same run (2n³/t);
4. the ratios engine/baseline (target ≤ 1.3) and engine GFLOP/s / matmul peak
   (target ≥ 25 % at N·P ≥ 1e5);
5. peak RSS of the engine at S and 4S steps, each in a fresh subprocess (VmHWM of
   /proc/self/status; ``ru_maxrss`` is unreliable here because after vfork/exec it
   can report the parent's high-water mark), with the number of saves held fixed and
   with ``save_every`` held fixed, plus a control that keeps every path's weights
   (stats_only=False) to show that the measurement does detect growth.

Timings alternate engine and baseline and keep the best of several repetitions
(other processes may load the CPU; only ratios inside one run are meaningful).
Process CPU time (all threads) is recorded too, as a cross-check that is less
sensitive to such interference.

Run from the repository root:

    python benchmarks/ensemble.py            # full run, a few minutes
    python benchmarks/ensemble.py --quick    # < 30 s smoke run
    python benchmarks/ensemble.py --out bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np

import sdenet
from sdenet._ensemble import _init, _reduce, _run_chunk, path_keys, run_ensemble
from sdenet._sde import build_dynamics

LR = 0.05
SIGMA = 0.01
SEED = 0

# name, N, dim, width, paths, steps (P = width·(dim + 2) + 1 for one hidden layer)
FULL_CONFIGS = [
    dict(name="tiny", n=32, dim=4, width=8, paths=64, steps=1000),
    dict(name="small", n=128, dim=8, width=16, paths=128, steps=500),
    dict(name="medium", n=512, dim=16, width=32, paths=128, steps=100),
    dict(name="large", n=256, dim=64, width=64, paths=64, steps=100),
]
QUICK_CONFIGS = [
    dict(name="quick", n=256, dim=16, width=32, paths=32, steps=200),
]
SAVE_EVERY = 10


# --------------------------------------------------------------------------- helpers
def make_problem(cfg):
    return sdenet.get_problem("teacher-student", n_train=cfg["n"], n_test=0,
                              dim=cfg["dim"], width=cfg["width"], seed=SEED)


def make_noise(kind, n):
    if kind == "minibatch":
        return sdenet.Minibatch(batch_size=min(8, n // 2))
    return sdenet.Isotropic(SIGMA)


OBS = sdenet.Observables(train_points=(), test_points=())


def timed(fn):
    """(wall seconds, process CPU seconds) of fn() with its result made ready."""
    c0, t0 = time.process_time(), time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0, time.process_time() - c0


def race(fns: dict, reps: int) -> dict:
    """Alternate the callables ``reps`` times; best wall and matching CPU time each."""
    best = {k: (math.inf, math.inf) for k in fns}
    walls = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            w, c = timed(fn)
            walls[k].append(w)
            if w < best[k][0]:
                best[k] = (w, c)
    return {k: dict(wall=best[k][0], cpu=best[k][1], median=float(np.median(walls[k])))
            for k in fns}


def make_matmul(n=1024, inner=4):
    """A jitted float32 n×n @ n×n matmul run ``inner`` times; (callable, flops)."""
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(f(a, b))

    def run():
        for _ in range(inner):
            out = jax.block_until_ready(f(a, b))
        return out

    return run, inner * 2.0 * n**3


def matmul_peak(matmul, reps=5):
    """Best GFLOP/s of the matmul (wall) and the matching GFLOP per CPU-second."""
    run, flops = matmul
    t = race({"matmul": run}, reps)["matmul"]
    return dict(gflops=flops / t["wall"] / 1e9, gflops_cpu=flops / t["cpu"] / 1e9)


# --------------------------------------------------------------------------- baseline
def make_baseline(problem, noise, paths, steps, save_every):
    """Euler–Maruyama in one jit: scan over saves, scan over steps, vmap over paths.

    Minibatch: θ ← θ − ∇_θ Σ_i c_i ℓ_i(θ), c_i = η/N + (η/B)·a·(ΔW_i − mean ΔW).
    Isotropic: θ ← θ − η∇L + ησ ξ.
    At each save the same observables as the engine (train loss, ‖θ‖, ‖θ − θ0‖) are
    reduced to the ensemble mean and variance.
    """
    n = problem.n_train
    theta0 = problem.theta0
    minibatch = isinstance(noise, sdenet.Minibatch)
    if minibatch:
        b = noise.batch_size
        a = math.sqrt(b * (n - b) / (n * (n - 1)))

    def step(theta, key):
        if minibatch:
            dm = a * jax.random.normal(key, (n,), theta.dtype)
            c = LR / n + (LR / b) * (dm - jnp.mean(dm))
            return theta - jax.grad(lambda t: jnp.sum(c * problem.per_sample_loss(t)))(theta)
        xi = jax.random.normal(key, theta.shape, theta.dtype)
        return theta - LR * problem.grad(theta) + LR * SIGMA * xi

    def observe(theta):
        r = problem.train_output(theta) - problem.y_train
        return {"train_loss": 0.5 * jnp.mean(r**2),
                "weight_norm": jnp.linalg.norm(theta),
                "distance_from_init": jnp.linalg.norm(theta - theta0)}

    @jax.jit
    def run(keys):
        def save_body(thetas, k):
            def inner(thetas, j):
                ks = jax.vmap(lambda key: jax.random.fold_in(key, k * save_every + j))(keys)
                return jax.vmap(step)(thetas, ks), None

            thetas, _ = jax.lax.scan(inner, thetas, jnp.arange(save_every))
            return thetas, _reduce(jax.vmap(observe)(thetas))

        thetas = jnp.broadcast_to(theta0, (paths,) + theta0.shape)
        return jax.lax.scan(save_body, thetas, jnp.arange(steps // save_every))

    keys = path_keys(jax.random.key(SEED), paths)
    return lambda: run(keys)


# --------------------------------------------------------------------------- variants
def engine_like(dynamics, advance, n_saves):
    """The engine's scan over saves (vmapped ``advance`` + observe + reduce), one jit."""

    @jax.jit
    def run(state, keys):
        def body(state, k):
            state = jax.vmap(advance, in_axes=(0, None, 0))(state, k, keys)
            okeys = jax.vmap(lambda key: jax.random.fold_in(key, k + 1))(keys)
            return state, _reduce(jax.vmap(dynamics.observe)(state, okeys))

        return jax.lax.scan(body, state, jnp.arange(n_saves))

    return run


def advance_step_scan(dynamics):
    """diffrax terms and Euler.step, but a plain lax.scan instead of diffeqsolve."""
    n_inner = round(dynamics.save_every / dynamics.dt)

    def advance(state, k, key):
        terms = dynamics._terms(key)
        solver = dfx.Euler()

        def one(y, j):
            t0 = (k * n_inner + j).astype(state.dtype) * dynamics.dt
            y, *_ = solver.step(terms, t0, t0 + dynamics.dt, y, None, None, False)
            return y, None

        return jax.lax.scan(one, state, jnp.arange(n_inner))[0]

    return advance


def advance_diffeqsolve(dynamics, adjoint):
    """The engine's ``advance`` with another diffrax adjoint.

    (RecursiveCheckpointAdjoint, diffrax's default, refuses UnsafeBrownianPath.)
    """
    n_inner = round(dynamics.save_every / dynamics.dt)

    def advance(state, k, key):
        t0 = k * dynamics.save_every
        sol = dfx.diffeqsolve(
            dynamics._terms(key), dfx.Euler(), t0, t0 + dynamics.save_every,
            dynamics.dt, state, stepsize_controller=dfx.ConstantStepSize(),
            saveat=dfx.SaveAt(t1=True), adjoint=adjoint, max_steps=n_inner + 2,
            throw=False)
        return sol.ys[0]

    return advance


def batched_solve(dynamics, n_saves):
    """One diffeqsolve over the whole (paths, P) ensemble per save interval.

    The per-path terms are vmapped inside a wrapper term, so diffrax's loop, its
    bookkeeping and the Euler update run once for the ensemble instead of under vmap.
    """
    import lineax as lx

    class PathBatched(dfx.AbstractTerm):
        keys: jax.Array

        def contr(self, t0, t1, **kwargs):
            return jax.vmap(lambda key: dynamics._terms(key).contr(t0, t1))(self.keys)

        def vf(self, t, y, args):
            control = jax.eval_shape(lambda: self.contr(t, t))
            return lx.FunctionLinearOperator(
                lambda c: self.vf_prod(t, y, args, c), control)

        def prod(self, vf, control):
            return vf.mv(control)

        def vf_prod(self, t, y, args, control):
            return jax.vmap(
                lambda key, y, c: dynamics._terms(key).vf_prod(t, y, args, c)
            )(self.keys, y, control)

    n_inner = round(dynamics.save_every / dynamics.dt)

    @jax.jit
    def run(state, keys):
        term = PathBatched(keys)

        def body(state, k):
            t0 = k * dynamics.save_every
            sol = dfx.diffeqsolve(
                term, dfx.Euler(), t0, t0 + dynamics.save_every, dynamics.dt, state,
                stepsize_controller=dfx.ConstantStepSize(), saveat=dfx.SaveAt(t1=True),
                adjoint=dfx.ForwardMode(), max_steps=n_inner + 2, throw=False)
            state = sol.ys[0]
            okeys = jax.vmap(lambda key: jax.random.fold_in(key, k + 1))(keys)
            return state, _reduce(jax.vmap(dynamics.observe)(state, okeys))

        return jax.lax.scan(body, state, jnp.arange(n_saves))

    return run


# --------------------------------------------------------------------------- throughput
def bench_config(cfg, kind, reps, variants, log, matmul, breakdown=True):
    problem = make_problem(cfg)
    noise = make_noise(kind, cfg["n"])
    n, p, paths, steps = cfg["n"], problem.n_params, cfg["paths"], cfg["steps"]
    n_saves = steps // SAVE_EVERY
    key = jax.random.key(SEED)

    def engine():
        return sdenet.simulate(problem, noise, LR, steps, paths, key,
                               save_every=SAVE_EVERY, stats_only=True,
                               observables=OBS, progress=False)

    baseline = make_baseline(problem, noise, paths, steps, SAVE_EVERY)

    # engine internals, for the breakdown of where the time goes
    dynamics = build_dynamics(problem, noise, LR, save_every=SAVE_EVERY, observables=OBS)
    keys = path_keys(key, paths)
    state0, _ = _init(dynamics, keys)

    def core():  # the engine's jitted scan over all saves in one call, no host sync
        return _run_chunk(dynamics, state0, jnp.asarray(0), keys, n_saves, True)

    def driver():  # run_ensemble: ~20 chunks with host checks, no Dataset building
        return run_ensemble(dynamics, key, paths, n_saves, SAVE_EVERY,
                            stats_only=True, progress=False)

    first_engine = timed(engine)[0]
    first_baseline = timed(baseline)[0]
    fns = {"engine": engine, "baseline": baseline, "matmul": matmul[0]}
    if breakdown:
        fns.update(core=core, driver=driver)
        for name in ("core", "driver"):
            timed(fns[name])  # compile / warm
    if variants:
        fns["step_scan"] = (lambda r: lambda: r(state0, keys))(
            engine_like(dynamics, advance_step_scan(dynamics), n_saves))
        fns["batched_solve"] = (lambda r: lambda: r(state0, keys))(
            batched_solve(dynamics, n_saves))
        fns["direct_adjoint"] = (lambda r: lambda: r(state0, keys))(
            engine_like(dynamics, advance_diffeqsolve(dynamics, dfx.DirectAdjoint()),
                        n_saves))
        for name in ("step_scan", "batched_solve", "direct_adjoint"):
            timed(fns[name])  # compile
    t = race(fns, reps)
    nan = dict(wall=math.nan, cpu=math.nan, median=math.nan)
    t.setdefault("core", nan)
    t.setdefault("driver", nan)

    # correctness cross-check: same final mean train loss (statistically)
    ds = engine()
    _, base_obs = jax.block_until_ready(baseline())
    eng_loss = float(ds.train_loss_mean[-1])
    base_loss = float(base_obs["train_loss_mean"][-1])

    path_steps = paths * steps
    flops = 6.0 * n * p * path_steps
    row = dict(
        config=cfg["name"], noise=kind, N=n, P=p, NP=n * p, paths=paths, steps=steps,
        save_every=SAVE_EVERY,
        engine_compile_s=max(first_engine - t["engine"]["wall"], 0.0),
        baseline_compile_s=max(first_baseline - t["baseline"]["wall"], 0.0),
        engine_s=t["engine"]["wall"], engine_median_s=t["engine"]["median"],
        baseline_s=t["baseline"]["wall"], baseline_median_s=t["baseline"]["median"],
        core_s=t["core"]["wall"], driver_s=t["driver"]["wall"],
        engine_cpu_s=t["engine"]["cpu"], baseline_cpu_s=t["baseline"]["cpu"],
        engine_path_steps_per_s=path_steps / t["engine"]["wall"],
        baseline_path_steps_per_s=path_steps / t["baseline"]["wall"],
        engine_gflops=flops / t["engine"]["wall"] / 1e9,
        baseline_gflops=flops / t["baseline"]["wall"] / 1e9,
        ratio=t["engine"]["wall"] / t["baseline"]["wall"],
        ratio_median=t["engine"]["median"] / t["baseline"]["median"],
        ratio_cpu=t["engine"]["cpu"] / t["baseline"]["cpu"],
        core_ratio=t["core"]["wall"] / t["baseline"]["wall"],
        engine_gflops_per_cpu_s=flops / t["engine"]["cpu"] / 1e9,
        matmul_gflops=matmul[1] / t["matmul"]["wall"] / 1e9,
        matmul_gflops_per_cpu_s=matmul[1] / t["matmul"]["cpu"] / 1e9,
        final_train_loss_engine=eng_loss, final_train_loss_baseline=base_loss,
    )
    row["efficiency"] = row["engine_gflops"] / row["matmul_gflops"]
    row["efficiency_cpu"] = row["engine_gflops_per_cpu_s"] / row["matmul_gflops_per_cpu_s"]
    if variants:
        row["step_scan_s"] = t["step_scan"]["wall"]
        row["batched_solve_s"] = t["batched_solve"]["wall"]
        row["step_scan_ratio"] = t["step_scan"]["wall"] / t["baseline"]["wall"]
        row["batched_solve_ratio"] = t["batched_solve"]["wall"] / t["baseline"]["wall"]
        row["direct_adjoint_s"] = t["direct_adjoint"]["wall"]
        row["direct_adjoint_ratio"] = t["direct_adjoint"]["wall"] / t["baseline"]["wall"]
    log(f"  {cfg['name']:<7} {kind:<9} engine {row['engine_s']:.3f}s  core "
        f"{_s(row['core_s']).strip()}  baseline {row['baseline_s']:.3f}s  ratio "
        f"{row['ratio']:.2f} (cpu {row['ratio_cpu']:.2f})  matmul "
        f"{row['matmul_gflops']:.0f} GFLOP/s")
    return row


def fixed_overhead(reps):
    """Per-call cost of sdenet.simulate that does not scale with the work.

    A one-save run (10 steps, 2 paths of the tiny problem) against its jitted scan
    alone, and ``sdenet.versions()`` (package metadata read for the provenance attrs
    of every Dataset).
    """
    from sdenet._artefact import versions

    cfg = FULL_CONFIGS[0]
    problem = make_problem(cfg)
    noise = make_noise("minibatch", cfg["n"])
    key = jax.random.key(SEED)
    dynamics = build_dynamics(problem, noise, LR, save_every=SAVE_EVERY, observables=OBS)
    keys = path_keys(key, 2)
    state0, _ = _init(dynamics, keys)
    fns = dict(
        simulate=lambda: sdenet.simulate(problem, noise, LR, SAVE_EVERY, 2, key,
                                         save_every=SAVE_EVERY, stats_only=True,
                                         observables=OBS, progress=False),
        core=lambda: _run_chunk(dynamics, state0, jnp.asarray(0), keys, 1, True),
        versions=versions,
    )
    for f in fns.values():
        timed(f)
    t = race(fns, reps)
    return {k + "_ms": 1e3 * v["wall"] for k, v in t.items()}


# --------------------------------------------------------------------------- memory
def _vm(field: str) -> int:
    """A ``Vm*`` line of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(spec: dict) -> dict:
    """Runs in a fresh process: three identical engine calls and the peak RSS.

    Peaks are VmHWM of /proc/self/status. ``peak_kib`` is the process's lifetime
    peak after the three calls (imports, set-up and compilation included); for each
    call VmHWM is also reset just before it (/proc/self/clear_refs) to get the growth
    of that call alone over the RSS it started from. The first call compiles; the
    second still warms the allocator; the third is the steady state.
    """
    cfg = spec["cfg"]
    problem = make_problem(cfg)
    noise = make_noise(spec["noise"], cfg["n"])
    obs = OBS if spec["stats_only"] else sdenet.Observables(
        train_points=(), test_points=(), weights=True)
    jax.block_until_ready(problem.theta0)
    out = dict(setup_peak_kib=_vm("VmHWM"), call_delta_kib=[], call_wall_s=[])
    lifetime = out["setup_peak_kib"]
    for _ in range(3):
        lifetime = max(lifetime, _vm("VmHWM"))
        out["peak_reset"] = _reset_peak()
        before = _vm("VmRSS")
        t0 = time.perf_counter()
        ds = sdenet.simulate(problem, noise, LR, spec["steps"], cfg["paths"],
                             jax.random.key(SEED), save_every=spec["save_every"],
                             stats_only=spec["stats_only"], observables=obs,
                             progress=False)
        out["call_wall_s"].append(time.perf_counter() - t0)
        out["call_delta_kib"].append(_vm("VmHWM") - before)
        del ds
    out["peak_kib"] = max(lifetime, _vm("VmHWM"))
    out["final_rss_kib"] = _vm("VmRSS")
    out["n_saves"] = spec["steps"] // spec["save_every"]
    return out


def run_memory(cfg, kind, steps, log, quick=False):
    """Peak RSS at S and 4S steps, each measured in a fresh subprocess."""
    s4 = 4 * steps
    cases = [  # (label, steps, save_every, stats_only)
        ("S (10 saves)", steps, steps // 10, True),
        ("4S, saves fixed", s4, s4 // 10, True),
        ("4S, save_every fixed", s4, steps // 10, True),
        ("control S, all weights", steps, steps // 10, False),
        ("control 4S, all weights", s4, steps // 10, False),
    ][: 2 if quick else 5]
    out = []
    for label, st, se, stats in cases:
        spec = dict(cfg=cfg, noise=kind, steps=st, save_every=se, stats_only=stats)
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--_memory-child", json.dumps(spec)],
            capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"memory child failed:\n{proc.stderr[-2000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res.update(label=label, steps=st, save_every=se, stats_only=stats)
        log("  " + _memory_line(res))
        out.append(res)
    return out


def _memory_line(m):
    d = "/".join(f"{x / 1024:.0f}" for x in m["call_delta_kib"])
    return (f"{m['label']:<24} steps {m['steps']:>4} save_every {m['save_every']:>3} "
            f"saves {m['n_saves']:>3} | process peak {m['peak_kib'] / 1024:6.1f} MiB | "
            f"growth per call 1st/2nd/3rd {d} MiB")


# --------------------------------------------------------------------------- report
def _s(x):
    return "      -" if math.isnan(x) else f"{x:>6.3f}s"


def format_table(rows):
    head = (f"{'config':<7} {'noise':<9} {'N':>4} {'P':>5} {'N·P':>7} {'paths':>5} "
            f"{'steps':>5} {'compile e/b':>11} {'engine':>7} {'core':>7} {'base':>7} "
            f"{'path-steps/s':>12} {'GFLOP/s':>7} {'base':>5} {'matmul':>6} "
            f"{'eng/base':>8} {'(cpu)':>5} {'%peak':>5} {'(cpu)':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['config']:<7} {r['noise']:<9} {r['N']:>4} {r['P']:>5} {r['NP']:>7.1e} "
            f"{r['paths']:>5} {r['steps']:>5} {r['engine_compile_s']:>5.2f}/"
            f"{r['baseline_compile_s']:.2f}s "
            f"{r['engine_s']:>6.3f}s {_s(r['core_s'])} {r['baseline_s']:>6.3f}s "
            f"{r['engine_path_steps_per_s']:>12.3g} {r['engine_gflops']:>7.1f} "
            f"{r['baseline_gflops']:>5.1f} {r['matmul_gflops']:>6.0f} "
            f"{r['ratio']:>8.2f} {r['ratio_cpu']:>5.2f} "
            f"{100 * r['efficiency']:>4.0f}% {100 * r['efficiency_cpu']:>4.0f}%")
    return "\n".join(lines)


def format_variants(rows):
    rows = [r for r in rows if "step_scan_s" in r]
    if not rows:
        return ""
    head = (f"{'config':<7} {'noise':<9} {'baseline':>8} {'simulate':>11} {'driver':>11} "
            f"{'core':>11} {'step_scan':>11} {'batched':>11} {'direct':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        b = r["baseline_s"]

        def c(x):
            return f"{x:.3f}/{x / b:.2f}"

        lines.append(f"{r['config']:<7} {r['noise']:<9} {b:>7.3f}s {c(r['engine_s']):>11} "
                     f"{c(r['driver_s']):>11} {c(r['core_s']):>11} "
                     f"{c(r['step_scan_s']):>11} {c(r['batched_solve_s']):>11} "
                     f"{c(r['direct_adjoint_s']):>11}")
    return "\n".join(lines)


def _finite(x):
    """NaN (a measurement that was skipped) as JSON null."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (< 30 s)")
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--reps", type=int, help="timing repetitions (best is kept)")
    parser.add_argument("--no-variants", action="store_true",
                        help="skip the diagnostic engine variants")
    parser.add_argument("--no-memory", action="store_true", help="skip the RSS check")
    parser.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return 0

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    configs = QUICK_CONFIGS if args.quick else FULL_CONFIGS
    reps = args.reps or (2 if args.quick else 5)
    variants = not (args.quick or args.no_variants)

    log(f"jax {jax.__version__} on {jax.default_backend()} ({os.cpu_count()} CPUs), "
        "float32")
    matmul = make_matmul()
    peak0 = matmul_peak(matmul)
    log(f"matmul peak (1024³ f32): {peak0['gflops']:.1f} GFLOP/s")

    rows = []
    for cfg in configs:
        for kind in ("minibatch", "isotropic"):
            rows.append(bench_config(cfg, kind, reps, variants, log, matmul,
                                     breakdown=not args.quick))
    peak = max([peak0["gflops"]] + [r["matmul_gflops"] for r in rows])
    overhead = fixed_overhead(reps) if variants else {}

    memory = []
    if not args.no_memory:
        mcfg = configs[-1]
        msteps = 50 if args.quick else 200
        log(f"peak RSS of sdenet.simulate, {mcfg['name']} config, minibatch noise, "
            "fresh subprocess per line:")
        memory = run_memory(mcfg, "minibatch", msteps, log, quick=args.quick)

    big = [r for r in rows if r["NP"] >= 1e5]
    targets = dict(
        ratio_le_1_3=all(r["ratio"] <= 1.3 for r in rows),
        worst_ratio=max(r["ratio"] for r in rows),
        efficiency_ge_25pct_at_NP_ge_1e5=bool(big) and all(
            r["efficiency"] >= 0.25 for r in big),
        efficiency_at_NP_ge_1e5={f"{r['config']}/{r['noise']}": round(r["efficiency"], 3)
                                 for r in big},
        efficiency_vs_best_matmul_at_NP_ge_1e5={
            f"{r['config']}/{r['noise']}": round(r["engine_gflops"] / peak, 3)
            for r in big},
        efficiency_cpu_at_NP_ge_1e5={
            f"{r['config']}/{r['noise']}": round(r["efficiency_cpu"], 3) for r in big},
    )
    growth = {}
    for i, j, name in ((0, 1, "fixed_saves"), (0, 2, "fixed_save_every"),
                       (3, 4, "control_all_weights")):
        if len(memory) > j:
            growth[name] = dict(
                process_peak=(memory[j]["peak_kib"] - memory[i]["peak_kib"]) / 1024,
                third_call=(memory[j]["call_delta_kib"][2]
                            - memory[i]["call_delta_kib"][2]) / 1024)
    targets["peak_rss_growth_S_to_4S_mib"] = growth

    print()
    print(f"jax {jax.__version__}, diffrax {sdenet.versions()['diffrax']}, "
          f"{os.cpu_count()} CPUs, float32; times are the best of {reps} alternating runs")
    print("engine = sdenet.simulate(stats_only=True, Euler, dt=1, save_every=10); core = "
          "its jitted scan alone; base = hand-written lax.scan")
    print("GFLOP/s counts 6·N·P per path-step; matmul = 1024³ f32 GFLOP/s raced in the "
          "same loop; %peak = engine/matmul (wall), (cpu) = per CPU-second")
    print(format_table(rows))
    print(f"best matmul of the run: {peak:.1f} GFLOP/s")
    print("same dynamics: final mean train loss engine/baseline: " + ", ".join(
        f"{r['config']}/{r['noise'][:3]} {r['final_train_loss_engine']:.4g}/"
        f"{r['final_train_loss_baseline']:.4g}" for r in rows))
    v = format_variants(rows)
    if v:
        print()
        print("where the time goes (seconds / ratio to baseline): simulate = full call; "
              "driver = run_ensemble (chunks + host syncs,")
        print("no Dataset); core = the jitted scan in one call; step_scan = diffrax terms + "
              "Euler.step in lax.scan, no diffeqsolve;")
        print("batched = one diffeqsolve over the (paths, P) ensemble, terms vmapped inside; "
              "direct = engine's diffeqsolve with DirectAdjoint")
        print(v)
    if overhead:
        print(f"fixed cost per simulate call (1 save, 2 paths, tiny): "
              f"{overhead['simulate_ms']:.1f} ms vs {overhead['core_ms']:.2f} ms for its "
              f"jitted scan; sdenet.versions() alone {overhead['versions_ms']:.1f} ms")
    if memory:
        print()
        print(f"peak RSS (VmHWM) of sdenet.simulate(stats_only=True unless 'all weights'), "
              f"config {configs[-1]['name']}, minibatch, fresh process per line;")
        print("process peak = lifetime VmHWM after 3 identical calls; growth per call = "
              "VmHWM reset before each call minus the RSS it started from (1st compiles)")
        for m in memory:
            print("  " + _memory_line(m))
    print()
    print("targets: engine/baseline <= 1.3:", "met" if targets["ratio_le_1_3"] else
          "NOT met", f"(worst {targets['worst_ratio']:.2f})")
    print("         engine >= 25% of matmul peak at N·P >= 1e5:",
          "met" if targets["efficiency_ge_25pct_at_NP_ge_1e5"] else "NOT met",
          targets["efficiency_at_NP_ge_1e5"])
    for name, g in growth.items():
        print(f"         peak RSS S -> 4S, {name}: process peak {g['process_peak']:+.1f} MiB, "
              f"3rd-call growth {g['third_call']:+.1f} MiB")
    total = time.perf_counter() - t_start
    print(f"total benchmark time {total:.0f} s")

    if args.out:
        result = dict(
            meta=dict(jax=jax.__version__, backend=jax.default_backend(),
                      cpus=os.cpu_count(), platform=platform.platform(),
                      python=platform.python_version(), versions=sdenet.versions(),
                      quick=args.quick, reps=reps, lr=LR, sigma=SIGMA,
                      save_every=SAVE_EVERY, dtype="float32",
                      flops_per_path_step="6*N*P", total_s=total),
            matmul_peak_gflops=peak, matmul_first=peak0, rows=rows, memory=memory,
            fixed_overhead=overhead,
            targets=targets)
        with open(args.out, "w") as f:
            json.dump(_finite(result), f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
