"""Simulation-based calibration of the loss-curve family (minibatch scale s).

s ~ LogNormal(0, 0.5); each replication is 4 runs of `linear` (η ∈ {0.02, 0.05} ×
B ∈ {4, 16}, 300 steps logged every 5) simulated by `sdenet.simulate` with
`Minibatch(B, scale=s)` noise and Euler–Maruyama at dt = 1 — the chain whose first two
moments the loss-curve closure computes (the mean exactly, the (co)variances with Gaussian
fourth moments). The runs share a configuration across
replications, so the loss-moment coefficients are computed once and all replications
are fitted jointly (MAP pilot, then NUTS with the working covariance, as `sdenet.fit`).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import init_to_value

import sdenet
from sdenet._fit import map_estimate, run_nuts
from sdenet._infer_loss_curve import (loss_curve_moments, loss_curve_pointwise,
                                      model_data, prepare_loss_curve)

LRS, BATCHES, STEPS, EVERY = (0.02, 0.05), (4, 16), 300, 5
PRIOR = dist.LogNormal(0.0, 0.5)


def simulate(reps, seed):
    problem = sdenet.get_problem("linear")
    key = jax.random.key(seed)
    scales = np.asarray(PRIOR.sample(key, (reps,)))
    obs = sdenet.Observables(train_points=(), test_points=())
    runs = []
    for r, s in enumerate(scales):
        rep = []
        for i, lr in enumerate(LRS):
            for j, b in enumerate(BATCHES):
                ds = sdenet.simulate(problem, sdenet.Minibatch(b, jnp.asarray(s)), lr,
                                     STEPS, 1, jax.random.fold_in(key, 100 * r + 10 * i + j),
                                     solver="euler", dt=1.0, save_every=EVERY,
                                     observables=obs, progress=False)
                rep.append(sdenet.Run(f"lr{lr}-B{b}", ds.time.values.astype(float),
                                      ds.train_loss.values[0], None,
                                      {"lr": lr, "batch_size": b}))
        runs.append(rep)
    return problem, scales, runs


def _joint(data, ys, kw, working=None):
    reps = ys.shape[0]
    with numpyro.plate("rep", reps):
        s = numpyro.sample("s", PRIOR)

    def loglik(s_r, y, w):
        d = data | {"y": y}
        return jnp.sum(loss_curve_pointwise({"s": s_r, "obs_sd": 0.0}, d, working=w,
                                            **kw)[0])

    numpyro.factor("loglik", jnp.sum(jax.vmap(loglik)(s, ys, working)))


def sbc(reps, seed, warmup=300, samples=300):
    problem, scales, runs = simulate(reps, seed)
    prepared = prepare_loss_curve(runs[0], problem, "minibatch")
    data = model_data(prepared)
    ys = jnp.stack([jnp.asarray(prepare_loss_curve(r, problem, "minibatch").y)
                    for r in runs])
    kw = dict(kind="minibatch", n_terms=prepared.n_terms, b_ref=prepared.b_ref,
              scale=prepared.scale)
    start = init_to_value(values={"s": jnp.ones(reps)})
    pilot = map_estimate(_joint, {"data": data, "ys": ys, "kw": kw}, init_strategy=start)
    working = jax.vmap(lambda s_r: dict(zip(("var", "cov"), loss_curve_moments(
        {"s": s_r, "obs_sd": 0.0}, data, **kw)[1:])))(pilot["s"])
    mcmc = run_nuts(_joint, {"data": data, "ys": ys, "kw": kw, "working": working},
                    chains=1, warmup=warmup, samples=samples, seed=seed,
                    dense_mass=False, init_strategy=init_to_value(values={
                        "s": pilot["s"]}))
    return scales, np.asarray(mcmc.get_samples()["s"]).T


def coverage(truth, draws):
    out = {}
    for level in (0.5, 0.9):
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=1)
        out[level] = float(np.mean((lo < truth) & (truth < hi)))
    return out


def test_sbc_loss_curve_smoke():
    """(CI size) 10 replications: the machinery, and coverage not absurd — a calibrated
    90% interval covers ≥ 5 of 10 with probability > 0.9998."""
    t0 = time.time()
    truth, draws = sbc(10, seed=5)
    cover = coverage(truth, draws)
    print(f"\nSBC loss-curve smoke ({time.time() - t0:.0f} s): {cover}")
    assert cover[0.9] >= 0.5


@pytest.mark.slow
def test_sbc_loss_curve_calibration():
    """100 replications: coverage of the central 50% and 90% intervals of s within ±8
    points of nominal (binomial SEs 5.0 and 3.0 points; fixed seed)."""
    t0 = time.time()
    truth, draws = sbc(100, seed=606, warmup=500, samples=400)
    cover = coverage(truth, draws)
    print(f"\nSBC loss-curve, 100 replications ({time.time() - t0:.0f} s): "
          f"50% {cover[0.5]:.2f}, 90% {cover[0.9]:.2f}")
    assert abs(cover[0.5] - 0.5) <= 0.08
    assert abs(cover[0.9] - 0.9) <= 0.08
