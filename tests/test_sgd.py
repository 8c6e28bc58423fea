"""Discrete SGD ground truth and its agreement with the SDE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdenet
from sdenet._sgd import SGDDynamics

NO_OUTPUTS = sdenet.Observables(train_points=(), test_points=())


def _dynamics(problem, b, sampling):
    return SGDDynamics(problem=problem, lr=jnp.asarray(0.1), weight_decay=jnp.asarray(0.0),
                       theta0=problem.theta0, observables=NO_OUTPUTS, batch_size=b,
                       sampling=sampling, save_every=1)


def test_batches(linear_problem):
    p, b = linear_problem, 16
    key = jax.random.key(0)
    iid = _dynamics(p, b, "iid")
    for step in range(5):
        idx = np.asarray(iid.batch(key, step))
        assert len(set(idx)) == b and idx.min() >= 0 and idx.max() < p.n_train
    rr = _dynamics(p, b, "reshuffle")
    e = p.n_train // b
    for epoch in range(3):
        idx = np.concatenate([np.asarray(rr.batch(key, epoch * e + j)) for j in range(e)])
        assert sorted(idx) == list(range(p.n_train))
    first = np.asarray(rr.batch(key, 0))
    assert not np.array_equal(first, np.asarray(rr.batch(key, e)))


def test_full_batch_sgd_is_gradient_descent_and_matches_sde(tiny_mlp):
    """B = N: no noise (κ = 0); SGD, the Minibatch SDE at dt=1 and a hand loop agree."""
    p, lr, wd = tiny_mlp, 0.2, 0.01
    sched = sdenet.make_schedule("cosine", lr, 40)
    obs = sdenet.Observables(weights=True)
    a = sdenet.sgd(p, p.n_train, sched, 40, 2, jax.random.key(0), save_every=10,
                   weight_decay=wd, observables=obs, progress=False)
    b = sdenet.simulate(p, sdenet.Minibatch(p.n_train), sched, 40, 2, jax.random.key(1),
                        save_every=10, weight_decay=wd, observables=obs, progress=False)
    theta = p.theta0
    for k in range(40):
        theta = theta - sched(k) * (p.grad(theta) + wd * theta)
    np.testing.assert_allclose(a.weights.values[0, -1], theta, rtol=1e-10)
    np.testing.assert_allclose(b.weights.values[1, -1], theta, rtol=1e-10)


def _excess_floor(ds, l_min, start):
    per_path = (ds.train_loss.sel(time=slice(start, None)) - l_min).mean("time").values
    return per_path.mean(), per_path.std(ddof=1) / np.sqrt(len(per_path))


def test_stationary_floor_sde_vs_sgd(linear_problem):
    """Excess train loss at stationarity: SDE within 10% of real SGD for both sampling
    schemes (each ratio's standard error must be < 2% for the check to mean anything),
    and reshuffling's floor far below iid's (DESIGN §2)."""
    p, lr, b, steps, paths = linear_problem, 0.02, 4, 3000, 256
    zero = jnp.zeros_like(p.theta0)
    l_min = float(p.loss(jnp.linalg.solve(jax.hessian(p.loss)(zero), -p.grad(zero))))
    floors = {}
    for sampling in ("iid", "reshuffle"):
        sde = sdenet.simulate(p, sdenet.Minibatch(b, sampling=sampling), lr, steps, paths,
                              jax.random.key(1), save_every=10, observables=NO_OUTPUTS,
                              progress=False)
        real = sdenet.sgd(p, b, lr, steps, paths, jax.random.key(2), sampling=sampling,
                          save_every=10, observables=NO_OUTPUTS, progress=False)
        (ms, ss), (mr, sr) = _excess_floor(sde, l_min, 1500), _excess_floor(real, l_min, 1500)
        ratio = ms / mr
        ratio_se = ratio * np.hypot(ss / ms, sr / mr)
        assert ratio_se < 0.02, (sampling, ratio_se)
        assert abs(ratio - 1) < 0.10, (sampling, ratio)
        floors[sampling] = mr
    assert floors["reshuffle"] < 0.5 * floors["iid"], floors


@pytest.mark.parametrize("bad", [dict(batch_size=0), dict(batch_size=65),
                                 dict(sampling="nope"), dict(weight_decay=-1.0)])
def test_sgd_rejects_bad_arguments(linear_problem, bad):
    kwargs = dict(batch_size=4, sampling="iid", weight_decay=0.0) | bad
    b = kwargs.pop("batch_size")
    with pytest.raises(ValueError):
        sdenet.sgd(linear_problem, b, 0.1, 10, 2, jax.random.key(0), progress=False,
                   **kwargs)
