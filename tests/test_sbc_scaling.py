"""Simulation-based calibration of the scaling family (one OU mode, K = 1).

Each replication draws (L*, κ, A, F0, α, β) from an explicit prior and builds a
one-weight `sdenet.Problem` whose loss is exactly L* + ½λ(θ − θ*)² (λ = κ/2, a constant
input column of value √λ, a zero-mean residual of size √(2L*)). Every run (η_r, B_r)
is a `sdenet.simulate` path with isotropic noise σ_r² = 4 F_r / η_r, so that its floor
is η_r σ_r²/4 = F_r = F0 (η_r/η_ref)^α (B_r/B_ref)^(−β) and its excess decays like
A e^{−η_r κ t}: the scaling model's assumptions, simulated by sdenet's own SDE solver
(SRA1, dt = 0.5). The logged loss is the full-batch loss (``observation_noise=False``).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import sdenet
from numpyro.infer import init_to_value

from sdenet._fit import map_estimate, run_nuts
from sdenet._infer_scaling import (prepare_scaling, scaling_init, scaling_pointwise,
                                   scaling_working)

LRS, BATCHES, N = (0.01, 0.02, 0.04), (4, 16), 16
SHORT, LONG = (400, 5), (1600, 20)  # (steps, log every): 80 log points either way
PARAMS = ("L_star", "alpha", "beta", "log_F0", "log_rate", "A_total")


def prior():
    """The SBC prior, also passed to the fit (overriding the data-driven defaults)."""
    return {
        "L_star": dist.Normal(0.5, 0.05),
        "log_rate": dist.Normal(np.log(1.5), 0.5).expand([1]).to_event(1),
        "A_total": dist.LogNormal(0.0, 0.5),
        "log_F0": dist.Normal(np.log(0.01), 0.5),
        "alpha": dist.Normal(1.0, 0.3),
        "beta": dist.Normal(1.0, 0.3),
    }


def _apply(params, x):
    return x[:, 0] * params["w"][0]


def _problem(l_star, lam, a_total):
    x = jnp.full((N, 1), jnp.sqrt(lam))
    r = jnp.sqrt(2 * l_star) * jnp.where(jnp.arange(N) % 2 == 0, 1.0, -1.0)
    theta_star = 0.3
    y = x[:, 0] * theta_star + r
    w0 = theta_star + jnp.sqrt(2 * a_total / lam)
    return sdenet.Problem(_apply, {"w": jnp.array([w0])}, x, y, name="sbc-mode")


def simulate_replications(reps, seed, design=SHORT):
    """Prior draws and their runs (lists of `sdenet.Run`), simulated by sdenet."""
    key = jax.random.key(seed)
    draws = {k: np.asarray(d.sample(jax.random.fold_in(key, i), (reps,)))
             for i, (k, d) in enumerate(prior().items())}
    eta_ref = float(np.exp(np.mean(np.log(LRS))))
    b_ref = float(np.exp(np.mean(np.log(BATCHES))))
    steps, every = design
    out = []
    for rep in range(reps):
        theta = {k: v[rep] for k, v in draws.items()}
        lam = float(np.exp(theta["log_rate"][0])) / 2
        problem = _problem(theta["L_star"], lam, theta["A_total"])
        runs = []
        for i, lr in enumerate(LRS):
            for j, b in enumerate(BATCHES):
                floor = np.exp(theta["log_F0"] + theta["alpha"] * np.log(lr / eta_ref)
                               - theta["beta"] * np.log(b / b_ref))
                sigma = jnp.asarray(np.sqrt(4 * floor / lr))
                ds = sdenet.simulate(
                    problem, sdenet.Isotropic(sigma), lr, steps, 1,
                    jax.random.fold_in(key, 1000 + 10 * rep + 3 * i + j), dt=0.5,
                    solver="sra1", save_every=every, progress=False,
                    observables=sdenet.Observables(train_points=(), test_points=()))
                t = ds.time.values[1:]  # t = 0 is deterministic
                runs.append(sdenet.Run(f"lr{lr}-B{b}", t.astype(float),
                                       ds.train_loss.values[0, 1:], None,
                                       {"lr": lr, "batch_size": b}))
        out.append(runs)
    return draws, out


def coverage(draws, samples, names=("alpha", "beta", "log_F0", "L_star")):
    """Central 50% / 90% interval coverage per parameter over replications."""
    table = {}
    for name in names:
        truth = np.asarray(draws[name]).reshape(len(samples), -1)[:, 0]
        post = np.stack([np.asarray(s[name]).reshape(len(s[name]), -1)[:, 0]
                         for s in samples])
        row = {}
        for level in (0.5, 0.9):
            lo, hi = np.quantile(post, [(1 - level) / 2, (1 + level) / 2], axis=1)
            row[level] = float(np.mean((lo < truth) & (truth < hi)))
        table[name] = row
    return table


def _joint_model(data, eta_ref, b_ref, floors, working=None):
    """All replications in one NUTS run: the joint posterior is the product of the
    per-replication posteriors, each with the likelihood code of `scaling_model`
    (``working``: per-replication working covariances, as `sdenet.fit` uses)."""
    reps = data["y"].shape[0]
    with numpyro.plate("rep", reps):
        params = {k: numpyro.sample(k, d) for k, d in prior().items()}
    params |= _fixed(reps)

    def loglik(p, d, floor, w):
        return jnp.sum(scaling_pointwise(p, d, eta_ref, b_ref, {"floor": floor}, w)[0])

    numpyro.factor("loglik", jnp.sum(jax.vmap(loglik)(params, data, floors, working)))


def _fixed(reps):
    return {"A_share": jnp.ones((reps, 1)), "floor_share": jnp.ones((reps, 1)),
            "obs_sd": jnp.zeros(reps)}


def sbc_joint(reps, seed, warmup=300, samples=200, design=SHORT):
    """Simulate ``reps`` replications and fit them jointly (MAP pilot, then NUTS with
    the working covariance, as `sdenet.fit` does); returns (draws, posterior samples)."""
    draws, runs = simulate_replications(reps, seed, design)
    prepared = [prepare_scaling(r, plateau_check=False) for r in runs]
    data = {k: jnp.stack([jnp.asarray(getattr(p, k)) for p in prepared])
            for k in ("t", "y", "mask", "lr", "batch_size")}
    floors = jnp.asarray([p.scale["floor"] for p in prepared])
    kw = {"data": data, "eta_ref": prepared[0].eta_ref, "b_ref": prepared[0].b_ref,
          "floors": floors}
    start = {k: jnp.stack([jnp.asarray(v) for v in vals]) for k, vals in zip(
        PARAMS, zip(*[[scaling_init(p, 1)[k] for k in PARAMS] for p in prepared]))}
    pilot = map_estimate(_joint_model, kw, init_strategy=init_to_value(values=start))
    pilot = {k: pilot[k] for k in PARAMS} | _fixed(reps)
    working = jax.vmap(lambda p, d, f: scaling_working(
        p, d, kw["eta_ref"], kw["b_ref"], {"floor": f}))(pilot, data, floors)
    mcmc = run_nuts(_joint_model, kw | {"working": working}, chains=1, warmup=warmup,
                    samples=samples, seed=seed, dense_mass=False,
                    init_strategy=init_to_value(values={k: pilot[k] for k in PARAMS}))
    post = mcmc.get_samples()
    return draws, [{k: np.asarray(v[:, i]) for k, v in post.items()} for i in range(reps)]


def test_sbc_scaling_smoke():
    """(CI size) 8 replications fitted jointly (one compilation): the machinery, and
    coverage not absurd — a calibrated 90% interval covers ≥ 4 of 8 with probability
    > 0.9996 per parameter."""
    t0 = time.time()
    draws, samples = sbc_joint(8, seed=11)
    table = coverage(draws, samples)
    print(f"\nSBC scaling smoke ({time.time() - t0:.0f} s): {table}")
    for name, row in table.items():
        assert row[0.9] >= 0.5, name


def sbc_100(design):
    draws, samples = {}, []
    for batch in range(5):
        d, s = sbc_joint(20, seed=300 + batch, warmup=500, samples=400, design=design)
        for k, v in d.items():
            draws[k] = np.concatenate([draws[k], v]) if k in draws else v
        samples += s
        jax.clear_caches()
    return coverage(draws, samples)


def _report(table, label, seconds):
    print(f"\nSBC scaling, 100 replications, {label} ({seconds:.0f} s):")
    for name, row in table.items():
        print(f"  {name}: 50% {row[0.5]:.2f}, 90% {row[0.9]:.2f}")


@pytest.mark.slow
def test_sbc_scaling_calibration():
    """100 replications (5 joint batches of 20, the likelihood, pilot and working
    covariance of `sdenet.fit`, K = 1) of runs 1600 steps long (24 correlation times of
    the slowest floor at η = 0.01): coverage of central 50% and 90% intervals of α, β,
    log F0 and L* within ±8 points of nominal (binomial SEs 5.0 and 3.0 points; fixed
    seeds). Measured: 0.55/0.94, 0.57/0.92, 0.48/0.89, 0.57/0.92. ~4 min."""
    t0 = time.time()
    table = sbc_100(LONG)
    _report(table, "1600-step runs", time.time() - t0)
    for name, row in table.items():
        assert abs(row[0.5] - 0.5) <= 0.08, name
        assert abs(row[0.9] - 0.9) <= 0.08, name


@pytest.mark.slow
def test_sbc_scaling_short_runs_exponents():
    """The same with runs 400 steps long (6 correlation times): α and β stay calibrated
    (measured 0.54/0.92 and 0.46/0.84) but the levels do not — log F0 0.36/0.84 and L*
    0.36/0.86: a floor averaged over a few correlation times has a skewed (χ²-like)
    sampling distribution that no Gaussian surrogate captures. Asserted for α, β only;
    the level figures are reported in the README as a known limit."""
    t0 = time.time()
    table = sbc_100(SHORT)
    _report(table, "400-step runs", time.time() - t0)
    for name in ("alpha", "beta"):
        assert abs(table[name][0.5] - 0.5) <= 0.08, name
        assert abs(table[name][0.9] - 0.9) <= 0.08, name
