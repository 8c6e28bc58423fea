"""Stationary excess train loss of SGD and of the Minibatch SDE, iid vs reshuffle.

On the built-in ``linear`` problem (N = 64, P = 9) every run starts at the exact
minimiser θ* and is run for a burn-in of 3 slowest relaxation times 1/(η λ_min) and
then a window of 10 more; the *floor* of one path is the mean of L(θ) − L_min over
every step of that window, and the table gives the mean over paths ± its Monte Carlo
standard error. Four ensembles per (η, B): real minibatch SGD (optax) and the
Minibatch SDE (Euler–Maruyama, dt = 1 step), each with ``sampling="iid"`` and
``sampling="reshuffle"``.

For iid sampling the linear problem has a closed second-moment recursion (the loss is
quadratic and the minibatch-gradient covariance is quadratic in θ); its fixed point
gives the exact iid floor, which SGD and the SDE at dt = 1 share (both recursions
depend only on the first two moments of the noise). It is reported as a check on the
Monte Carlo numbers.

    python experiments/sampling.py [--quick] [--out DIR]
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import sdenet  # noqa: E402

NAME = "sampling"
NO_OUTPUTS = sdenet.Observables(train_points=(), test_points=())
SCHEMES = ("iid", "reshuffle")

SIZES = {
    # lrs, batch sizes, paths, burn-in and window in units of 1/(η λ_min)
    "full": dict(lrs=(0.005, 0.01, 0.02, 0.05), batch_sizes=(4, 16), paths=512,
                 burn=3.0, window=10.0),
    "quick": dict(lrs=(0.02, 0.05), batch_sizes=(4,), paths=128, burn=2.0, window=4.0),
    "smoke": dict(lrs=(0.05,), batch_sizes=(4,), paths=32, burn=1.0, window=1.0),
}


# ---------------------------------------------------------------- linear algebra
def minimiser(problem):
    """θ* and L_min of a problem that is linear in its weights (Newton from 0)."""
    zero = jnp.zeros_like(problem.theta0)
    hess = jax.hessian(problem.loss)(zero)
    theta = jnp.linalg.solve(hess, -problem.grad(zero))
    eig = np.linalg.eigvalsh(np.asarray(hess))
    return theta, float(problem.loss(theta)), eig


def exact_iid_floor(problem, lr, batch_size, l_min):
    """Stationary E[L] − L_min of iid SGD (= Minibatch SDE at dt = 1) on a linear problem.

    With z = (θ, 1), r_i = a_i·z and g_i = G_i z, G_i = J_iᵀ a_iᵀ; the second moment
    Z = E[z zᵀ] obeys Z ← (I − ηḠ) Z (I − ηḠ)ᵀ + η² κ/(B N) Σ_i D_i Z D_iᵀ,
    D_i = G_i − Ḡ, κ = (N − B)/(N − 1). Its fixed point is found by squaring.
    """
    n, p = problem.n_train, problem.n_params
    zero = jnp.zeros_like(problem.theta0)
    jac = np.asarray(problem.jacobian(zero, problem.x_train))
    a = np.concatenate([jac, np.asarray(problem.residual(zero))[:, None]], axis=1)
    g = np.zeros((n, p + 1, p + 1))
    g[:, :p, :] = jac[:, :, None] * a[:, None, :]
    gbar = g.mean(0)
    d = g - gbar
    eye = np.eye(p + 1)
    kappa = (n - batch_size) / (n - 1)
    step = np.kron(eye - lr * gbar, eye - lr * gbar)
    step += lr**2 * kappa / (batch_size * n) * np.einsum("iac,ibd->abcd", d, d).reshape(
        (p + 1) ** 2, (p + 1) ** 2)
    for _ in range(60):  # step^(2^60): the projector onto the stationary moments
        step = step @ step
    z0 = np.zeros((p + 1, p + 1))
    z0[-1, -1] = 1.0
    zs = (step @ z0.ravel()).reshape(p + 1, p + 1)
    return 0.5 * float(np.trace(a.T @ a / n @ zs)) - l_min


# ---------------------------------------------------------------- measurement
def floor(ds, l_min, burn):
    """Per-path mean of L − L_min over the saves after ``burn``: mean and SE over paths."""
    per_path = (ds.train_loss.sel(time=slice(burn + 0.5, None)) - l_min).mean("time").values
    return float(per_path.mean()), float(per_path.std(ddof=1) / math.sqrt(len(per_path)))


def ratio(a, sa, b, sb):
    """a/b with the delta-method standard error of independent estimates."""
    r = a / b
    return r, abs(r) * math.hypot(sa / a, sb / b)


def fit_slope(x, y, se):
    """Least-squares slope of log y on log x and its standard error from the SEs of y."""
    lx, ly = np.log(np.asarray(x)), np.log(np.asarray(y))
    w = (lx - lx.mean()) / np.sum((lx - lx.mean()) ** 2)
    slope = float(np.sum(w * ly))
    return slope, float(math.sqrt(np.sum((w * np.asarray(se) / np.asarray(y)) ** 2)))


def run_grid(size, *, log=print):
    cfg = SIZES[size]
    problem = sdenet.get_problem("linear")
    theta_star, l_min, eig = minimiser(problem)
    lam_min = float(eig[0])
    rows = []
    seed = 0
    for lr in cfg["lrs"]:
        tau = 1.0 / (lr * lam_min)
        for b in cfg["batch_sizes"]:
            epoch = problem.n_train // b
            burn = epoch * math.ceil(cfg["burn"] * tau / epoch)
            steps = burn + epoch * math.ceil(cfg["window"] * tau / epoch)
            exact = exact_iid_floor(problem, lr, b, l_min)
            for scheme in SCHEMES:
                t0 = time.perf_counter()
                seed += 1
                real = sdenet.sgd(problem, b, lr, steps, cfg["paths"],
                                  jax.random.key(2 * seed), sampling=scheme, save_every=1,
                                  theta0=theta_star, observables=NO_OUTPUTS,
                                  progress=False)
                sde = sdenet.simulate(problem, sdenet.Minibatch(b, sampling=scheme), lr,
                                      steps, cfg["paths"], jax.random.key(2 * seed + 1),
                                      save_every=1, theta0=theta_star,
                                      observables=NO_OUTPUTS, progress=False)
                m_sgd, s_sgd = floor(real, l_min, burn)
                m_sde, s_sde = floor(sde, l_min, burn)
                r, sr = ratio(m_sde, s_sde, m_sgd, s_sgd)
                rows.append(dict(lr=lr, batch_size=b, lr_over_b=lr / b, scheme=scheme,
                                 steps=steps, burn=burn, paths=cfg["paths"],
                                 sgd=m_sgd, sgd_se=s_sgd, sde=m_sde, sde_se=s_sde,
                                 sde_over_sgd=r, sde_over_sgd_se=sr,
                                 exact_iid=exact if scheme == "iid" else None))
                log(f"  lr={lr} B={b} {scheme}: {steps} steps, SGD {m_sgd:.3e}±{s_sgd:.1e}"
                    f", SDE {m_sde:.3e}±{s_sde:.1e}, ratio {r:.3f}±{sr:.3f} "
                    f"({time.perf_counter() - t0:.0f} s)")
    # reshuffle / iid ratios
    for row in rows:
        if row["scheme"] != "reshuffle":
            continue
        iid = next(r for r in rows if r["scheme"] == "iid" and r["lr"] == row["lr"]
                   and r["batch_size"] == row["batch_size"])
        for kind in ("sgd", "sde"):
            q, sq = ratio(row[kind], row[kind + "_se"], iid[kind], iid[kind + "_se"])
            row[f"reshuffle_over_iid_{kind}"] = q
            row[f"reshuffle_over_iid_{kind}_se"] = sq
    slopes = {}
    for kind in ("sgd", "sde"):
        for scheme in SCHEMES:
            sel = [r for r in rows if r["scheme"] == scheme]
            if len({r["lr_over_b"] for r in sel}) < 2:
                continue
            s, ss = fit_slope([r["lr_over_b"] for r in sel], [r[kind] for r in sel],
                              [r[kind + "_se"] for r in sel])
            slopes[f"{kind}_{scheme}"] = dict(slope=s, se=ss)
            for b in cfg["batch_sizes"]:
                sub = [r for r in sel if r["batch_size"] == b]
                if len(sub) >= 2 and len(cfg["batch_sizes"]) > 1:
                    s, ss = fit_slope([r["lr"] for r in sub], [r[kind] for r in sub],
                                      [r[kind + "_se"] for r in sub])
                    slopes[f"{kind}_{scheme}_B{b}_vs_lr"] = dict(slope=s, se=ss)
    return dict(problem="linear", l_min=l_min, hessian_eigenvalues=eig.tolist(),
                lambda_min=lam_min, lambda_max=float(eig[-1]), size=size, sde_dt=1.0,
                sde_solver="euler", rows=rows, slopes=slopes, config=cfg)


# ---------------------------------------------------------------- reporting
def markdown(result) -> str:
    def pm(m, s, digits=3):
        return f"{m:.{digits}e} ± {s:.1e}"

    lines = [
        "| η | B | scheme | SGD floor | SDE floor | SDE/SGD | reshuffle/iid SGD "
        "| reshuffle/iid SDE | exact iid floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        rr = ("", "")
        if r["scheme"] == "reshuffle":
            rr = tuple(f"{r[f'reshuffle_over_iid_{k}']:.3f} ± "
                       f"{r[f'reshuffle_over_iid_{k}_se']:.3f}" for k in ("sgd", "sde"))
        exact = "" if r["exact_iid"] is None else f"{r['exact_iid']:.3e}"
        lines.append(
            f"| {r['lr']} | {r['batch_size']} | {r['scheme']} | {pm(r['sgd'], r['sgd_se'])}"
            f" | {pm(r['sde'], r['sde_se'])} | {r['sde_over_sgd']:.3f} ± "
            f"{r['sde_over_sgd_se']:.3f} | {rr[0]} | {rr[1]} | {exact} |")
    if result["slopes"]:
        lines += ["", "| fit of log floor vs log(η/B) | slope ± SE |", "|---|---|"]
        for key, v in result["slopes"].items():
            lines.append(f"| {key} | {v['slope']:.3f} ± {v['se']:.3f} |")
    return "\n".join(lines)


def figure(result, path):
    rows = result["rows"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {("sgd", "iid"): ("C0", "o", "SGD iid"),
              ("sde", "iid"): ("C0", "x", "SDE iid"),
              ("sgd", "reshuffle"): ("C3", "o", "SGD reshuffle"),
              ("sde", "reshuffle"): ("C3", "x", "SDE reshuffle")}
    for (kind, scheme), (color, marker, label) in styles.items():
        sel = sorted((r for r in rows if r["scheme"] == scheme),
                     key=lambda r: r["lr_over_b"])
        ax0.errorbar([r["lr_over_b"] for r in sel], [r[kind] for r in sel],
                     yerr=[r[kind + "_se"] for r in sel], color=color, marker=marker,
                     ls="none", mfc="none" if marker == "o" else None, label=label)
    iid = sorted((r for r in rows if r["scheme"] == "iid"), key=lambda r: r["lr_over_b"])
    ax0.plot([r["lr_over_b"] for r in iid], [r["exact_iid"] for r in iid], "C0+",
             ms=12, label="exact iid (moments)")
    ax0.set(xscale="log", yscale="log", xlabel="η / B",
            ylabel="stationary E[L] − L_min", title="linear: stationary excess loss")
    ax0.legend(fontsize=8)
    for i, b in enumerate(sorted({r["batch_size"] for r in rows})):
        for scheme, color in (("iid", "C0"), ("reshuffle", "C3")):
            sel = [r for r in rows if r["scheme"] == scheme and r["batch_size"] == b]
            ax1.errorbar([r["lr"] * (1 + 0.04 * i) for r in sel],
                         [r["sde_over_sgd"] for r in sel],
                         yerr=[r["sde_over_sgd_se"] for r in sel], color=color,
                         marker="os"[i], mfc="none", label=f"{scheme}, B={b}")
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.set(xscale="log", xlabel="η", ylabel="SDE floor / SGD floor",
            title="Minibatch SDE (dt = 1) vs real SGD")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid, < 1 min")
    parser.add_argument("--smoke", action="store_true", help="tiny run for the tests")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / NAME)
    args = parser.parse_args(argv)
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    start = time.perf_counter()
    result = run_grid(size)
    result["seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(result, indent=2))
    figure(result, args.out / f"{NAME}.png")
    print(f"λ(Hessian) ∈ [{result['lambda_min']:.3f}, {result['lambda_max']:.3f}], "
          f"L_min = {result['l_min']:.6f}; {result['seconds']:.0f} s")
    print(markdown(result))
    print(f"wrote {args.out / (NAME + '.json')} and {args.out / (NAME + '.png')}")
    return result


if __name__ == "__main__":
    main()
