"""Weak error of the Minibatch SDE against real SGD as a function of the learning rate.

On the built-in ``linear`` problem, iid minibatch SGD with B = 4 and the Minibatch SDE
(Euler–Maruyama with a small step dt, with and without the second-order SME drift
correction −(η²/4)∇‖∇L‖²) are run from θ0 = 0 to the same horizon T in continuous
time t = η·step (steps = T/η), for several η. The weak error is

    max over the saves (every Δt = 0.1 of continuous time) of |E_sde[L] − E_sgd[L]|,

and its slope against η on log–log axes is the weak order (theory: 1 for the
first-order SDE, 2 with the SME correction).

Three estimates of the same quantity are reported:

- **MC plain**: ensemble means of L, with the Monte Carlo standard error of the
  difference at the time of the maximum.
- **MC CV**: the same runs with a control variate. The loss is quadratic and the
  dynamics affine in θ, so E[θ_t] is the noise-free trajectory of each model (gradient
  descent for SGD, the Euler iterates of the drift for the SDE — computed by sdenet
  with B = N, where the noise vanishes). L(θ) − ∇L(μ_t)·(θ − μ_t) has the same mean as
  L(θ) but not its O(√η) fluctuation, which otherwise hides the O(η²) differences.
- **exact**: the closed first- and second-moment recursions of this linear problem
  (numpy, independent of sdenet), for the SDE at the dt used and for dt → 0 (matrix
  exponential). The *drift part* of the exact error is L(E_sde θ) − L(E_sgd θ).

A noise-free row (B = N: SGD is gradient descent, the SDE the gradient flow, solved by
sdenet with a much smaller dt) isolates the drift correction.

    python experiments/weak_order.py [--quick] [--out DIR]
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
import scipy.linalg  # noqa: E402

import sdenet  # noqa: E402

NAME = "weak_order"
WEIGHTS = sdenet.Observables(train_points=(), test_points=(), weights=True)
VARIANTS = (("first", False), ("sme", True))

SIZES = {
    "full": dict(lrs=(0.0125, 0.025, 0.05, 0.1), horizon=2.0, save_dt=0.1, batch_size=4,
                 dt=0.05, sgd_paths=32768, sde_paths=8192, det_dt=0.001),
    "quick": dict(lrs=(0.05, 0.1), horizon=2.0, save_dt=0.1, batch_size=4, dt=0.1,
                  sgd_paths=2048, sde_paths=1024, det_dt=0.01),
    "smoke": dict(lrs=(0.1, 0.2), horizon=1.0, save_dt=0.2, batch_size=4, dt=0.2,
                  sgd_paths=256, sde_paths=128, det_dt=0.2),
}


# ---------------------------------------------------------------- exact moments
class LinearMoments:
    """Closed moment recursions of SGD and the Minibatch SDE on a linear problem.

    With z = (θ, 1): r_i = a_i·z, g_i = G_i z (G_i = J_iᵀ a_iᵀ, padded with a zero
    row), L = ½ zᵀ A z with A = (1/N) Σ a_i a_iᵀ. iid SGD (batches of B distinct
    points, κ = (N − B)/(N − 1)):
        m ← (I − ηḠ) m,   Z ← (I − ηḠ) Z (I − ηḠ)ᵀ + η² κ/(BN) Σ D_i Z D_iᵀ,
    D_i = G_i − Ḡ. The SDE with drift −η M z, M = (I + (η/2)H)Ḡ with the SME
    correction (else Ḡ), and diffusion covariance η² κ Σ(θ)/B:
        dm/dt = −η M m,   dZ/dt = −η (M Z + Z Mᵀ) + η² κ/(BN) Σ D_i Z D_iᵀ,
    solved exactly (matrix exponential) or by the Euler–Maruyama moment map at dt.
    """

    def __init__(self, problem):
        n, p = problem.n_train, problem.n_params
        zero = jnp.zeros_like(problem.theta0)
        jac = np.asarray(problem.jacobian(zero, problem.x_train))
        r0 = np.asarray(problem.residual(zero))
        probe = np.asarray(jax.random.normal(jax.random.key(7), (p,)))
        residual = np.asarray(problem.residual(jnp.asarray(probe)))
        if not np.allclose(residual, jac @ probe + r0):
            raise ValueError("LinearMoments needs a problem that is linear in its weights.")
        self.n, self.p = n, p
        a = np.concatenate([jac, r0[:, None]], axis=1)
        g = np.zeros((n, p + 1, p + 1))
        g[:, :p, :] = jac[:, :, None] * a[:, None, :]
        self.gbar = g.mean(0)
        d = g - self.gbar
        # Σ_i kron(D_i, D_i) / N acting on the row-major vec of Z
        self.noise = np.einsum("iac,ibd->abcd", d, d).reshape((p + 1) ** 2, -1) / n
        self.a_mat = a.T @ a / n
        self.hess = np.zeros((p + 1, p + 1))
        self.hess[:p, :p] = jac.T @ jac / n
        self.eye = np.eye(p + 1)
        self.z0 = np.append(np.asarray(problem.theta0), 1.0)

    def loss(self, z2):
        return 0.5 * float(np.sum(self.a_mat * z2))

    def _second(self, lin, noise_coef):
        return np.kron(lin, lin) + noise_coef * self.noise

    def sgd_maps(self, lr, b):
        kappa = (self.n - b) / (self.n - 1)
        lin = self.eye - lr * self.gbar
        return lin, self._second(lin, lr**2 * kappa / b)

    def sde_maps(self, lr, b, sme, dt):
        """(mean map, second-moment map) over one SGD step; dt=None: exact."""
        kappa = (self.n - b) / (self.n - 1)
        m = (self.eye + 0.5 * lr * self.hess * sme) @ self.gbar
        noise = lr**2 * kappa / b
        if dt is None:
            gen = -lr * (np.kron(m, self.eye) + np.kron(self.eye, m)) + noise * self.noise
            return scipy.linalg.expm(-lr * m), scipy.linalg.expm(gen)
        k = round(1 / dt)
        lin = self.eye - lr * dt * m
        return (np.linalg.matrix_power(lin, k),
                np.linalg.matrix_power(self._second(lin, noise * dt), k))

    def curves(self, maps, steps, save_every):
        """E[L] and L(E θ) at every save (time 0 included)."""
        mean_map = np.linalg.matrix_power(maps[0], save_every)
        second_map = np.linalg.matrix_power(maps[1], save_every)
        m, z2 = self.z0.copy(), np.outer(self.z0, self.z0).ravel()
        e_loss, mean_loss = [], []
        for k in range(steps // save_every + 1):
            if k:
                m, z2 = mean_map @ m, second_map @ z2
            e_loss.append(self.loss(z2.reshape(self.p + 1, -1)))
            mean_loss.append(self.loss(np.outer(m, m)))
        return np.asarray(e_loss), np.asarray(mean_loss)


# ---------------------------------------------------------------- measurement
def cv_losses(problem, ds, mean_weights):
    """Per-path L(θ) − ∇L(μ_t)·(θ − μ_t) (path, time): same mean, smaller variance."""
    grads = np.asarray(jax.vmap(problem.grad)(jnp.asarray(mean_weights)))
    theta = ds.weights.values
    return ds.train_loss.values - np.einsum("ptw,tw->pt", theta - mean_weights[None], grads)


def weak_error(sde_samples, sgd_samples):
    """max_t |mean difference| and the MC standard error at the arg-max."""
    diff = sde_samples.mean(0) - sgd_samples.mean(0)
    se = np.sqrt(sde_samples.var(0, ddof=1) / sde_samples.shape[0]
                 + sgd_samples.var(0, ddof=1) / sgd_samples.shape[0])
    k = int(np.argmax(np.abs(diff)))
    return float(abs(diff[k])), float(se[k]), diff, se


def fit_slope(x, y, se=None):
    """Least-squares slope of log y on log x (and its SE propagated from the SEs of y)."""
    lx, ly = np.log(np.asarray(x)), np.log(np.asarray(y))
    w = (lx - lx.mean()) / np.sum((lx - lx.mean()) ** 2)
    slope = float(np.sum(w * ly))
    if se is None:
        return slope, None
    return slope, float(math.sqrt(np.sum((w * np.asarray(se) / np.asarray(y)) ** 2)))


def run(size, *, log=print):
    cfg = SIZES[size]
    problem = sdenet.get_problem("linear")
    moments = LinearMoments(problem)
    n, b, dt = problem.n_train, cfg["batch_size"], cfg["dt"]
    rows, curves = [], []
    for i, lr in enumerate(cfg["lrs"]):
        t0 = time.perf_counter()
        steps = round(cfg["horizon"] / lr)
        save_every = round(cfg["save_dt"] / lr)
        assert abs(steps * lr - cfg["horizon"]) < 1e-9 and steps % save_every == 0
        common = dict(save_every=save_every, observables=WEIGHTS, progress=False)
        key = jax.random.fold_in(jax.random.key(2024), i)
        # noise-free trajectories: E[θ] of each model (B = N has κ = 0)
        gd = sdenet.sgd(problem, n, lr, steps, 1, key, **common)
        real = sdenet.sgd(problem, b, lr, steps, cfg["sgd_paths"],
                          jax.random.fold_in(key, 1), sampling="iid", **common)
        mu_sgd = gd.weights.values[0]
        sgd_plain = real.train_loss.values
        sgd_cv = cv_losses(problem, real, mu_sgd)
        exact_sgd, exact_sgd_mean = moments.curves(moments.sgd_maps(lr, b), steps,
                                                   save_every)
        row = dict(lr=lr, steps=steps, save_every=save_every, sgd_paths=cfg["sgd_paths"],
                   sde_paths=cfg["sde_paths"], dt=dt, det_dt=cfg["det_dt"])
        curve = dict(lr=lr, time=(real.time.values * lr).tolist())
        for name, sme in VARIANTS:
            flow = sdenet.simulate(problem, sdenet.Minibatch(n), lr, steps, 1, key, dt=dt,
                                   sme_correction=sme, **common)
            fine = flow if cfg["det_dt"] == dt else sdenet.simulate(
                problem, sdenet.Minibatch(n), lr, steps, 1, key, dt=cfg["det_dt"],
                sme_correction=sme, **common)
            sde = sdenet.simulate(problem, sdenet.Minibatch(b), lr, steps, cfg["sde_paths"],
                                  jax.random.fold_in(key, 2 + sme), dt=dt,
                                  sme_correction=sme, **common)
            plain, plain_se, _, _ = weak_error(sde.train_loss.values, sgd_plain)
            sde_cv = cv_losses(problem, sde, flow.weights.values[0])
            cv, cv_se, diff, diff_se = weak_error(sde_cv, sgd_cv)
            ex_dt, ex_dt_mean = moments.curves(moments.sde_maps(lr, b, sme, dt), steps,
                                               save_every)
            ex_0, ex_0_mean = moments.curves(moments.sde_maps(lr, b, sme, None), steps,
                                             save_every)
            det = np.abs(fine.train_loss.values[0] - gd.train_loss.values[0]).max()
            row[name] = dict(
                mc_plain=plain, mc_plain_se=plain_se, mc_cv=cv, mc_cv_se=cv_se,
                exact_dt=float(np.abs(ex_dt - exact_sgd).max()),
                exact_dt0=float(np.abs(ex_0 - exact_sgd).max()),
                exact_dt0_drift_part=float(np.abs(ex_0_mean - exact_sgd_mean).max()),
                exact_dt0_noise_part=float(np.abs((ex_0 - ex_0_mean)
                                                  - (exact_sgd - exact_sgd_mean)).max()),
                deterministic=float(det),
                mean_check=float(np.abs(flow.train_loss.values[0] - ex_dt_mean).max()
                                 + np.abs(gd.train_loss.values[0] - exact_sgd_mean).max()),
            )
            curve[name] = dict(mc_cv=diff.tolist(), mc_cv_se=diff_se.tolist(),
                               exact_dt=(ex_dt - exact_sgd).tolist(),
                               exact_dt0=(ex_0 - exact_sgd).tolist())
            r = row[name]
            log(f"  η={lr} {name}: MC plain {plain:.2e}±{plain_se:.1e}, MC CV {cv:.2e}±"
                f"{cv_se:.1e}, exact(dt) {r['exact_dt']:.2e}, exact(dt→0) "
                f"{r['exact_dt0']:.2e}, B=N {det:.2e}")
        log(f"  η={lr}: {steps} steps, {time.perf_counter() - t0:.0f} s")
        rows.append(row)
        curves.append(curve)
    lrs = [r["lr"] for r in rows]
    slopes = {}
    for name, _ in VARIANTS:
        for est in ("mc_plain", "mc_cv"):
            s, ss = fit_slope(lrs, [r[name][est] for r in rows],
                              [r[name][est + "_se"] for r in rows])
            slopes[f"{name}_{est}"] = dict(slope=s, se=ss)
        for est in ("exact_dt", "exact_dt0", "exact_dt0_drift_part", "exact_dt0_noise_part",
                    "deterministic"):
            slope = fit_slope(lrs, [r[name][est] for r in rows])[0]
            slopes[f"{name}_{est}"] = dict(slope=slope, se=None)
    return dict(problem="linear", batch_size=b, sampling="iid", size=size, config=cfg,
                rows=rows, slopes=slopes, curves=curves)


# ---------------------------------------------------------------- reporting
def markdown(result) -> str:
    cfg = result["config"]
    out = []
    titles = {"first": "first-order SDE (no correction)",
              "sme": "with the SME correction (`sme_correction=True`)"}
    for name, _ in VARIANTS:
        out += [
            f"**{titles[name]}** — max_t |E_sde[L] − E_sgd[L]|, B = {result['batch_size']} "
            f"iid, T = {cfg['horizon']}, SDE dt = {cfg['dt']}",
            "",
            "| η | steps | MC plain ± SE | MC CV ± SE | exact (dt) | exact (dt→0) "
            "| drift part (dt→0) | noise part (dt→0) "
            f"| noise-free B=N (dt={cfg['det_dt']}) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["rows"]:
            v = r[name]
            out.append(
                f"| {r['lr']} | {r['steps']} "
                f"| {v['mc_plain']:.2e} ± {v['mc_plain_se']:.1e} "
                f"| {v['mc_cv']:.2e} ± {v['mc_cv_se']:.1e} | {v['exact_dt']:.2e} "
                f"| {v['exact_dt0']:.2e} | {v['exact_dt0_drift_part']:.2e} "
                f"| {v['exact_dt0_noise_part']:.2e} | {v['deterministic']:.2e} |")
        s = result["slopes"]
        cells = []
        for est in ("mc_plain", "mc_cv"):
            fit = s[f"{name}_{est}"]
            cells.append(f"{fit['slope']:.2f} ± {fit['se']:.2f}")
        for est in ("exact_dt", "exact_dt0", "exact_dt0_drift_part", "exact_dt0_noise_part",
                    "deterministic"):
            cells.append(f"{s[f'{name}_{est}']['slope']:.2f}")
        out += ["| **slope** | | " + " | ".join(cells) + " |", ""]
    return "\n".join(out)


def figure(result, path):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for ax, (name, _) in zip(axes[:2], VARIANTS):
        for i, c in enumerate(result["curves"]):
            t = np.asarray(c["time"])
            d, se = np.asarray(c[name]["mc_cv"]), np.asarray(c[name]["mc_cv_se"])
            ax.fill_between(t, d - 2 * se, d + 2 * se, color=f"C{i}", alpha=0.25, lw=0)
            ax.plot(t, d, color=f"C{i}", lw=1, label=f"η = {c['lr']} (MC CV ± 2 SE)")
            ax.plot(t, c[name]["exact_dt"], color=f"C{i}", ls="--", lw=1)
        ax.axhline(0, color="k", lw=0.6)
        ax.set(xlabel="continuous time t = η · step", ylabel="E_sde[L] − E_sgd[L]",
               title=("first-order SDE" if name == "first" else "SDE + SME correction")
               + " (dashed: exact)")
        ax.legend(fontsize=7)
    ax = axes[2]
    lrs = np.asarray([r["lr"] for r in result["rows"]])
    for name, color in (("first", "C0"), ("sme", "C3")):
        rows = [r[name] for r in result["rows"]]
        ax.errorbar(lrs, [v["mc_cv"] for v in rows], yerr=[v["mc_cv_se"] for v in rows],
                    color=color, marker="o", ls="none", label=f"{name}: MC CV")
        ax.errorbar(lrs * 1.05, [v["mc_plain"] for v in rows],
                    yerr=[v["mc_plain_se"] for v in rows], color=color, marker="o",
                    mfc="none", ls="none", label=f"{name}: MC plain")
        ax.plot(lrs, [v["exact_dt"] for v in rows], color=color, ls="-",
                label=f"{name}: exact, dt = {result['config']['dt']}")
        ax.plot(lrs, [v["exact_dt0"] for v in rows], color=color, ls=":",
                label=f"{name}: exact, dt → 0")
        ax.plot(lrs, [v["deterministic"] for v in rows], color=color, marker="s",
                mfc="none", ls="--", lw=0.8, label=f"{name}: noise-free B = N")
    ref = lrs / lrs[0]
    y0 = result["rows"][0]["first"]["exact_dt0"]
    ax.plot(lrs, y0 * ref, "k-", lw=0.5)
    ax.plot(lrs, y0 * ref**2 / 4, "k-", lw=0.5)
    ax.text(lrs[-1], y0 * ref[-1], " η¹", fontsize=8)
    ax.text(lrs[-1], y0 * ref[-1] ** 2 / 4, " η²", fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="η", ylabel="weak error max_t |ΔE[L]|",
           title=f"linear, B = {result['batch_size']} iid, "
                 f"T = {result['config']['horizon']}")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two learning rates, < 1 min")
    parser.add_argument("--smoke", action="store_true", help="tiny run for the tests")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / NAME)
    args = parser.parse_args(argv)
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    start = time.perf_counter()
    result = run(size)
    result["seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(result, indent=2))
    figure(result, args.out / f"{NAME}.png")
    print(f"{result['seconds']:.0f} s")
    print(markdown(result))
    print(f"wrote {args.out / (NAME + '.json')} and {args.out / (NAME + '.png')}")
    return result


if __name__ == "__main__":
    main()
