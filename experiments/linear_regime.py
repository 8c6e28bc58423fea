"""A wide network early in training: SGD / SDE ensembles against the first-order closure.

Problem: ``teacher-student`` (8-D Gaussian inputs, tanh MLP student of width W = 256 in
NTK parametrisation, N = 16 train / M = 64 test points; its train NTK has full rank 16).
The first-order closure (DESIGN §3) linearises f(x; θ0 + δ) ≈ f0(x) + J(x) δ; then

    E f(t)  = f0 − η J W[φ(η a, t) ∘ Wᵀ b]          (independent of the noise),
    E L(t)  = L_GF(t) + (1/2N) tr V_train(t),     L_GF = loss of the mean output,

and for ``Isotropic(σ)`` each non-zero train mode (eigenvalue a_k of Θ/N) relaxes to
output variance η σ² N / 2, so the excess train loss tends to η σ² rank(Θ) / 4, not 0.
The SDE and SGD here take whole steps (Euler–Maruyama, dt = 1), whose mode variance is
exactly η² σ² λ_k / (1 − (1 − η a_k)²): their floor is η σ²/4 · Σ_k 2 / (2 − η a_k),
reported beside the continuous-time one.

Two sweeps, every ``save_every`` steps, train and test outputs and losses:

- ``Isotropic(σ)``: SDE Monte Carlo with antithetic pairs (the reflected problem
  θ' = −θ driven by the same key follows the SDE driven by −W; pair means cancel the
  O(σ) fluctuation), the noise-free Euler path f_0, and ``closure(order=1)``.
  The noise-induced shift is s = E f_σ − f_0 with the SE of the pair means.
- ``Minibatch(B)`` (iid): real SGD (``sdenet.sgd``), the Minibatch SDE and the
  closure; full-batch gradient descent (B = N) is the noise-free reference.

Standard errors: of a mean, std/√n (over pair means for the antithetic runs); of a
variance, std of the centred squares /√n. Statements are in these units.

    python experiments/linear_regime.py [--quick] [--out DIR]
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import equinox as eqx  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import sdenet  # noqa: E402

NAME = "linear_regime"
SIZES = {
    "full": dict(width=256, dim=8, n_train=16, n_test=64, lr=0.25, steps=1000,
                 save_every=50, sigmas=(0.01, 0.02, 0.04), pairs=256,
                 batch_sizes=(1, 2, 4), runs=256),
    "quick": dict(width=128, dim=8, n_train=16, n_test=32, lr=0.25, steps=400,
                  save_every=50, sigmas=(0.01, 0.04), pairs=64, batch_sizes=(2,),
                  runs=64),
    "smoke": dict(width=32, dim=4, n_train=8, n_test=8, lr=0.25, steps=40,
                  save_every=20, sigmas=(0.04,), pairs=16, batch_sizes=(2,), runs=16),
}
SEED = 0


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


def _rms(x, axis=-1):
    return np.sqrt(np.mean(np.square(x), axis=axis))



def moments(ds, pair=None):
    """Ensemble moments (per time, point) and their SEs; ``pair``: the antithetic twin."""
    out = {}
    for part in ("train", "test"):
        f = ds[f"{part}_output"].values  # (path, time, point)
        loss = ds[f"{part}_loss"].values  # (path, time)
        if pair is not None:
            f = np.concatenate([f, pair[f"{part}_output"].values])
            loss = np.concatenate([loss, pair[f"{part}_loss"].values])
        n = f.shape[0]
        mean, var = f.mean(0), f.var(0, ddof=1)
        units = (lambda a: 0.5 * (a[: n // 2] + a[n // 2:])) if pair is not None \
            else (lambda a: a)
        k = n // 2 if pair is not None else n
        sq = units((f - mean) ** 2)
        y = ds[f"{part}_target"].values
        mean_se = units(f).std(0, ddof=1) / math.sqrt(k)
        out[part] = dict(
            mean=mean, var=var, mean_se=mean_se, plain_se=np.sqrt(var / n),
            var_se=sq.std(0, ddof=1) / math.sqrt(k), var_part=0.5 * np.mean(var, -1),
            # ½ mean (E f − y)², less the bias of squaring a noisy mean
            loss_of_mean=0.5 * np.mean((mean - y) ** 2 - mean_se**2, -1),
            loss=loss.mean(0), loss_se=units(loss).std(0, ddof=1) / math.sqrt(k))
    return out


def closure_moments(ds):
    return {part: dict(mean=ds[f"{part}_output_mean"].values,
                       var=ds[f"{part}_output_var"].values,
                       loss=ds[f"{part}_loss_mean"].values,
                       loss_gf=ds[f"{part}_loss_mean_field"].values,
                       var_part=0.5 * ds[f"{part}_output_var"].values.mean(-1))
            for part in ("train", "test")}


def compare(mc, cl, ref):
    """Closure and noise-free reference ``ref`` (per time, point) against Monte Carlo."""
    res = {}
    for part in ("train", "test"):
        m, c = mc[part], cl[part]
        shift = m["mean"] - ref[part]
        with np.errstate(invalid="ignore", divide="ignore"):
            res[part] = dict(
                shift_rms=_rms(shift), shift_z=_rms(shift / m["mean_se"]),
                shift_plain_z=_rms(shift / m["plain_se"]),
                closure_flow_err_se=_rms((c["mean"] - ref[part]) / m["plain_se"]),
                shift_over_std=_rms(shift) / _rms(np.sqrt(m["var"])),
                closure_mean_err_se=_rms((c["mean"] - m["mean"]) / m["plain_se"]),
                var_ratio_median=np.median(c["var"] / m["var"], axis=-1),
                var_err_z=_rms((c["var"] - m["var"]) / m["var_se"]),
                loss_mc=m["loss"], loss_se=m["loss_se"], loss_closure=c["loss"],
                loss_gf=c["loss_gf"], loss_of_mean_mc=m["loss_of_mean"],
                var_part_mc=m["var_part"], var_part_closure=c["var_part"],
                # loss of the mean output minus that of the noise-free reference: the
                # part of the excess loss due to the noise-induced shift (0 at 1st order)
                mean_part_mc=m["loss_of_mean"] - 0.5 * np.mean(
                    (ref[part] - ref[part + "_target"]) ** 2, -1))
    return res


def run(size, log=print):
    t_start = time.perf_counter()
    cfg = SIZES[size]
    problem = sdenet.get_problem("teacher-student", width=cfg["width"], dim=cfg["dim"],
                                 n_train=cfg["n_train"], n_test=cfg["n_test"],
                                 parametrisation="ntk", seed=SEED)
    mirror = problem.reflected()
    lr, steps, every = cfg["lr"], cfg["steps"], cfg["save_every"]
    theta0, n = problem.theta0, problem.n_train
    ntk = eqx.filter_jit(lambda pr, th: pr.ntk(th, pr.x_train, pr.x_train))
    kt = np.asarray(ntk(problem, theta0))
    a = np.clip(np.linalg.eigvalsh(kt) / n, 0.0, None)
    rank = int(np.linalg.matrix_rank(kt))
    theta_gd = sdenet.trained_weights(problem, lr, steps)
    kt_end = np.asarray(ntk(problem, theta_gd))
    info = dict(problem=problem.config, P=problem.n_params, lr=lr, steps=steps,
                save_every=every, ntk_eigenvalues_over_n=a, ntk_rank=rank,
                lr_a_max=lr * a[-1], times=np.arange(0, steps + 1, every),
                ntk_rel_change_gd=np.linalg.norm(kt_end - kt) / np.linalg.norm(kt),
                loss0=float(problem.loss(theta0)),
                test_loss0=float(problem.test_loss(theta0)))
    log(f"[{time.perf_counter() - t_start:.0f} s] P={problem.n_params} rank(Θ)={rank} "
        f"ηa ∈ [{lr * a[0]:.3g}, {lr * a[-1]:.3g}] NTK change along GD "
        f"{info['ntk_rel_change_gd']:.3g}", flush=True)
    kw = dict(save_every=every, progress=False)
    key = jax.random.key(SEED)
    # ---- isotropic noise: antithetic SDE pairs vs closure
    # noise-free Euler path (dt = 1: exactly full-batch GD); same ensemble size as the
    # noisy runs so that their compiled code is reused
    flow = sdenet.simulate(problem, sdenet.Isotropic(0.0), lr, steps, cfg["pairs"], key,
                           **kw)
    f0 = {p: flow[f"{p}_output"].values[0] for p in ("train", "test")}
    f0 |= {f"{p}_target": flow[f"{p}_target"].values for p in ("train", "test")}
    f0_loss = {p: flow[f"{p}_loss"].values[0] for p in ("train", "test")}
    iso = []
    for sigma in cfg["sigmas"]:
        t0 = time.perf_counter()
        noise = sdenet.Isotropic(sigma)
        plus = sdenet.simulate(problem, noise, lr, steps, cfg["pairs"], key, **kw)
        minus = sdenet.simulate(mirror, noise, lr, steps, cfg["pairs"], key,
                                theta0=-theta0, **kw)
        mc = moments(plus, minus)
        cl = closure_moments(sdenet.closure(problem, noise, lr, steps, save_every=every))
        row = dict(sigma=sigma, paths=2 * cfg["pairs"], **compare(mc, cl, f0))
        excess = mc["train"]["loss"] - f0_loss["train"]
        row["floor"] = dict(
            mc_excess=excess[-1], mc_excess_se=mc["train"]["loss_se"][-1],
            closure_excess=cl["train"]["loss"][-1] - cl["train"]["loss_gf"][-1],
            continuous=lr * sigma**2 * rank / 4,
            discrete=lr * sigma**2 / 4 * float(np.sum(2.0 / (2.0 - lr * a[a > 0]))),
            loss_flow_end=f0_loss["train"][-1])
        row["seconds"] = time.perf_counter() - t0
        fl = row["floor"]
        log(f"  σ={sigma}: excess train loss MC {fl['mc_excess']:.4g} ± "
            f"{fl['mc_excess_se']:.2g}, closure {fl['closure_excess']:.4g}, ησ²rank/4 "
            f"{fl['continuous']:.4g}; test shift z {row['test']['shift_z'][-1]:.2f} "
            f"({row['seconds']:.0f} s)", flush=True)
        iso.append(row)
    # ---- minibatch noise: SGD vs SDE vs closure; GD (= the noise-free Euler path f_0)
    # is the noise-free reference
    mb = []
    for b in cfg["batch_sizes"]:
        t0 = time.perf_counter()
        noise = sdenet.Minibatch(b)
        sgd = moments(sdenet.sgd(problem, b, lr, steps, cfg["runs"],
                                 jax.random.key(SEED + b), **kw))
        sde = moments(sdenet.simulate(problem, noise, lr, steps, cfg["runs"],
                                      jax.random.key(SEED + 100 + b), **kw))
        cl = closure_moments(sdenet.closure(problem, noise, lr, steps, save_every=every))
        row = dict(batch_size=b, runs=cfg["runs"], sgd=compare(sgd, cl, f0),
                   sde=compare(sde, cl, f0), gd_train_loss=f0_loss["train"],
                   gd_test_loss=f0_loss["test"])
        row["seconds"] = time.perf_counter() - t0
        log(f"  B={b}: train loss SGD {row['sgd']['train']['loss_mc'][-1]:.4g}, SDE "
            f"{row['sde']['train']['loss_mc'][-1]:.4g}, closure "
            f"{row['sgd']['train']['loss_closure'][-1]:.4g}, GD "
            f"{row['gd_train_loss'][-1]:.4g} ({row['seconds']:.0f} s)", flush=True)
        mb.append(row)
    info["flow_train_loss"], info["flow_test_loss"] = f0_loss["train"], f0_loss["test"]
    # test loss against σ: least-squares slope (through 0) of E L_test(T) − L_0 on σ²
    s2 = np.array([r["sigma"] ** 2 for r in iso])
    y = np.array([r["test"]["loss_mc"][-1] - f0_loss["test"][-1] for r in iso])
    info["test_excess_per_sigma2"] = float(np.sum(s2 * y) / np.sum(s2 * s2))
    return dict(size=size, config=cfg, info=info, isotropic=iso, minibatch=mb)


def _pm(m, s, fmt=".4g"):
    return f"{m:{fmt}} ± {s:.1g}"


def tables(res):
    iso = ["| σ | excess train loss MC (T) | closure | ησ² rank/4 | Euler-step floor | "
           "E L_test MC (T) | closure | noise-free | test excess: variance part MC | "
           "closure | mean (shift) part MC |", "|" + "---|" * 11]
    shift = ["| σ | shift z (antithetic SE) train / test | shift / plain SE test | "
             "shift / std test | closure mean err / plain SE test (of which flow) | "
             "Var closure/MC median test | Var err z (rms) test |", "|" + "---|" * 7]
    ft = res["info"]["flow_test_loss"][-1]
    for r in res["isotropic"]:
        f, te, tr = r["floor"], r["test"], r["train"]
        iso.append(
            f"| {r['sigma']} | {_pm(f['mc_excess'], f['mc_excess_se'])} | "
            f"{f['closure_excess']:.4g} | {f['continuous']:.4g} | {f['discrete']:.4g} | "
            f"{_pm(te['loss_mc'][-1], te['loss_se'][-1])} | {te['loss_closure'][-1]:.4g} | "
            f"{ft:.4g} | {te['var_part_mc'][-1]:.4g} | {te['var_part_closure'][-1]:.4g} | "
            f"{te['mean_part_mc'][-1]:.3g} |")
        shift.append(
            f"| {r['sigma']} | {tr['shift_z'][-1]:.2f} / {te['shift_z'][-1]:.2f} | "
            f"{te['shift_plain_z'][-1]:.2f} | {te['shift_over_std'][-1]:.3f} | "
            f"{te['closure_mean_err_se'][-1]:.2f} ({te['closure_flow_err_se'][-1]:.2f}) | "
            f"{te['var_ratio_median'][-1]:.3f} | {te['var_err_z'][-1]:.2f} |")
    mb = ["| B | E L_train SGD (T) | SDE | closure | GD | E L_test SGD (T) | SDE | closure "
          "| GD | mean−GD z test SGD / SDE | Var closure/MC test SGD / SDE |",
          "|" + "---|" * 11]
    for r in res["minibatch"]:
        s, d = r["sgd"], r["sde"]
        mb.append(
            f"| {r['batch_size']} | "
            f"{_pm(s['train']['loss_mc'][-1], s['train']['loss_se'][-1])}"
            f" | {_pm(d['train']['loss_mc'][-1], d['train']['loss_se'][-1])} | "
            f"{s['train']['loss_closure'][-1]:.4g} | {r['gd_train_loss'][-1]:.4g} | "
            f"{_pm(s['test']['loss_mc'][-1], s['test']['loss_se'][-1])} | "
            f"{_pm(d['test']['loss_mc'][-1], d['test']['loss_se'][-1])} | "
            f"{s['test']['loss_closure'][-1]:.4g} | {r['gd_test_loss'][-1]:.4g} | "
            f"{s['test']['shift_z'][-1]:.2f} / {d['test']['shift_z'][-1]:.2f} | "
            f"{s['test']['var_ratio_median'][-1]:.3f} / "
            f"{d['test']['var_ratio_median'][-1]:.3f} |")
    return "\n".join(iso), "\n".join(shift), "\n".join(mb)


def figure(res, path):
    t = np.asarray(res["info"]["times"], dtype=float)
    fig, ax = plt.subplots(2, 3, figsize=(15, 8.5))
    col = plt.cm.viridis(np.linspace(0.1, 0.85, len(res["isotropic"])))
    info = res["info"]
    for c, r in zip(col, res["isotropic"]):
        s = r["sigma"]
        for k, part in enumerate(("train", "test")):
            d = r[part]
            ax[0, k].errorbar(t, d["loss_mc"], yerr=d["loss_se"], color=c, marker="o",
                              ms=3, ls="none", label=f"SDE σ={s}")
            ax[0, k].plot(t, d["loss_closure"], color=c)
        ax[0, 0].axhline(info["flow_train_loss"][-1] + r["floor"]["continuous"], color=c,
                         ls=":", lw=1)
        ax[0, 2].plot(t[1:], r["test"]["shift_z"][1:], color=c, marker="o",
                      label=f"σ={s} test")
        ax[0, 2].plot(t[1:], r["train"]["shift_z"][1:], color=c, ls="--", marker="x",
                      label=f"σ={s} train")
    for k, part in enumerate(("train", "test")):
        ax[0, k].plot(t, info[f"flow_{part}_loss"], "k--", lw=1, label="noise-free")
        ax[0, k].set(yscale="log", xlabel="step", ylabel=f"E L_{part}",
                     title=f"isotropic: {part} loss (dots MC, lines closure"
                     + (",\ndotted: noise-free + ησ²rank/4)" if k == 0 else ")"))
        ax[0, k].legend(fontsize=7)
    ax[0, 2].axhline(1.0, color="k", lw=0.8)
    ax[0, 2].set(yscale="log", xlabel="step", ylabel="rms |E f_σ − f_0| / SE",
                 title="shift of the mean output E f_σ − f_0\n(in antithetic SE units)")
    ax[0, 2].legend(fontsize=7)
    colb = plt.cm.plasma(np.linspace(0.1, 0.8, len(res["minibatch"])))
    for c, r in zip(colb, res["minibatch"]):
        b = r["batch_size"]
        for k, part in enumerate(("train", "test")):
            for kind, mk in (("sgd", "o"), ("sde", "x")):
                d = r[kind][part]
                ax[1, k].errorbar(t, d["loss_mc"], yerr=d["loss_se"], color=c, marker=mk,
                                  ms=4, ls="none", label=f"{kind.upper()} B={b}")
            ax[1, k].plot(t, r["sgd"][part]["loss_closure"], color=c)
        ax[1, 2].plot(t[1:], r["sgd"]["test"]["var_ratio_median"][1:], color=c, marker="o",
                      label=f"closure/SGD B={b}")
        ax[1, 2].plot(t[1:], r["sde"]["test"]["var_ratio_median"][1:], color=c, marker="x",
                      ls="--", label=f"closure/SDE B={b}")
    r0 = res["minibatch"][0]
    for k, part in enumerate(("train", "test")):
        ax[1, k].plot(t, r0[f"gd_{part}_loss"], "k--", lw=1, label="GD (B = N)")
        ax[1, k].set(yscale="log", xlabel="step", ylabel=f"E L_{part}",
                     title=f"minibatch: {part} loss (markers MC, lines closure)")
        ax[1, k].legend(fontsize=7)
    for c, r in zip(col, res["isotropic"]):
        ax[1, 2].plot(t[1:], r["test"]["var_ratio_median"][1:], color=c, ls=":",
                      label=f"closure/SDE σ={r['sigma']}")
    ax[1, 2].axhline(1.0, color="k", lw=0.8)
    ax[1, 2].set(xlabel="step", ylabel="median Var_closure / Var_MC (test points)",
                 title="output variance: closure vs Monte Carlo")
    ax[1, 2].legend(fontsize=6, ncol=2)
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
    start = time.perf_counter()
    result = run(size)
    result["seconds"] = time.perf_counter() - start
    result["versions"] = sdenet.versions()
    iso, shift, mb = tables(result)
    result["tables"] = {"isotropic": iso, "shift": shift, "minibatch": mb}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(_clean(result), indent=1))
    figure(result, args.out / f"{NAME}.png")
    print(f"\n{iso}\n\n{shift}\n\n{mb}\n")
    print(f"{size} run: {result['seconds']:.0f} s; wrote {args.out / NAME}.json and .png")
    return result


if __name__ == "__main__":
    main()
