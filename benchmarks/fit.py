"""Inference benchmark: wall time, ESS/s and recovery of the noise-model fits.

Standard case (issue 4): 36 real SGD runs of ``linear`` (N = 512) — 3 learning rates
× 3 batch sizes × 4 seeds, 300 log points each (`fit_data.py`) — with iid minibatches
and with random reshuffling. For each it runs, timing the whole call (compilation
included, 4 chains × 1000/500 NUTS, `fit`'s defaults):

- the scaling family with K = 1 and with K chosen by LOO (``modes="auto"``: K = 1..3);
  recovery: do the 90% intervals of α and β contain 1 (iid) / exclude it (reshuffle)?
- the loss-curve family (``noise="minibatch"``) on the iid runs: does the 90% interval
  of the scale s contain 1?
- the trajectory family on a standard weight trajectory (``linear``, N = 64, 16 paths,
  200 steps, every step recorded, isotropic σ = 0.3, Euler–Maruyama transitions).

ESS/s = the smallest bulk ESS over the family's parameters / wall time.

    python benchmarks/fit.py [--quick] [--no-auto] [--out FILE.json]
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import fit_data  # noqa: E402

import sdenet  # noqa: E402


def interval(idata, name, level=0.9):
    x = idata.posterior[name].values.reshape(-1)
    lo, hi = np.quantile(x, [(1 - level) / 2, (1 + level) / 2])
    return float(np.median(x)), float(lo), float(hi)


def diag_of(idata):
    return json.loads(idata.posterior.attrs["sdenet_config"])["diagnostics"]


def timed_fit(log, label, fn):
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = fn()
    seconds = time.perf_counter() - t
    d = diag_of(idata)
    row = {"case": label, "seconds": seconds, "ess_per_s": d["min_ess_bulk"] / seconds,
           **d}
    log(f"{label}: {seconds:.1f} s, min bulk ESS {d['min_ess_bulk']:.0f}, r_hat "
        f"{d['max_rhat']:.3f}, divergences {d['divergences']}")
    return idata, row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 seeds, 100 log points, 2 chains × 600/300")
    parser.add_argument("--out", help="write every number to this JSON")
    parser.add_argument("--no-auto", action="store_true",
                        help="skip the modes='auto' scaling fits (minutes each)")
    args = parser.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    seeds, steps, chains, n = (2, 1000, 2, 300) if args.quick else (4, 3000, 4, 500)
    nuts = dict(chains=chains, warmup=2 * n, samples=n)  # fit's defaults: 1000/500
    problem = fit_data.standard_problem()
    rows, recovery = [], []
    t0 = time.perf_counter()
    for sampling in ("iid", "reshuffle"):
        t = time.perf_counter()
        runs = fit_data.sgd_runs(problem, sampling=sampling, seeds=seeds, steps=steps)
        log(f"{sampling}: {len(runs)} runs × {len(runs[0].step)} points of real SGD "
            f"({time.perf_counter() - t:.0f} s)")
        for modes in (1,) if args.no_auto else (1, "auto"):
            idata, row = timed_fit(log, f"scaling {sampling} K={modes}", lambda: sdenet.fit(
                runs, modes=modes, observation_noise=False, **nuts))
            k = json.loads(idata.posterior.attrs["sdenet_config"])["modes"]
            row["modes"] = k
            rows.append(row)
            for name in ("alpha", "beta"):
                med, lo, hi = interval(idata, name)
                recovery.append({"family": "scaling", "sampling": sampling,
                                 "modes": modes, "chosen_K": k, "parameter": name,
                                 "median": med, "lo90": lo, "hi90": hi,
                                 "contains_1": lo < 1 < hi})
                log(f"  {name} = {med:.3f} [{lo:.3f}, {hi:.3f}] (K = {k})")
        if sampling == "iid":
            idata, row = timed_fit(log, "loss-curve iid (minibatch s)", lambda: sdenet.fit(
                runs, "loss-curve", problem=problem, noise="minibatch",
                observation_noise=False, **nuts))
            rows.append(row)
            med, lo, hi = interval(idata, "s")
            recovery.append({"family": "loss-curve", "sampling": "iid", "parameter": "s",
                             "median": med, "lo90": lo, "hi90": hi,
                             "contains_1": lo < 1 < hi})
            log(f"  s = {med:.4f} [{lo:.4f}, {hi:.4f}]")
    lin = sdenet.get_problem("linear")
    ds = sdenet.simulate(lin, sdenet.Isotropic(0.3), 0.05, 200, 16, jax.random.key(5),
                         solver="euler", dt=1.0, save_every=1, progress=False,
                         observables=sdenet.Observables(train_points=(), test_points=(),
                                                        weights=True))
    idata, row = timed_fit(log, "trajectory (EM, 16 paths × 200 steps)",
                           lambda: sdenet.fit_trajectory(ds, lin, family="em", **nuts))
    rows.append(row)
    med, lo, hi = interval(idata, "sigma")
    recovery.append({"family": "trajectory", "sampling": "isotropic σ = 0.3",
                     "parameter": "sigma", "median": med, "lo90": lo, "hi90": hi,
                     "contains_truth": lo < 0.3 < hi})
    print("| fit | wall s (incl. compile) | min bulk ESS | ESS/s | max r_hat | div |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['seconds']:.1f} | {r['min_ess_bulk']:.0f} | "
              f"{r['ess_per_s']:.1f} | {r['max_rhat']:.3f} | {r['divergences']} |")
    print()
    print("| family | sampling | K | parameter | median | 90% interval | contains 1 |")
    print("|---|---|---|---|---|---|---|")
    for r in recovery:
        k = r.get("chosen_K", "")
        hit = r.get("contains_1", r.get("contains_truth"))
        print(f"| {r['family']} | {r['sampling']} | {k} | {r['parameter']} | "
              f"{r['median']:.3f} | [{r['lo90']:.3f}, {r['hi90']:.3f}] | {hit} |")
    total = time.perf_counter() - t0
    print(f"\ntotal {total:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "recovery": recovery,
                                              "total_seconds": total,
                                              "quick": args.quick,
                                              "versions": sdenet.versions()}, indent=1))
    return rows, recovery


if __name__ == "__main__":
    main()
