"""Minibatch noise: the engine's diffusion against exact enumeration / counting laws."""

import itertools

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdenet
from sdenet._sde import build_dynamics


def _noise_map(problem, noise, theta, lr, t=0.0):
    """The linear map ΔW -> θ-increment of the engine's term, drift switched off."""
    dyn = build_dynamics(problem, noise, lr, save_every=1)
    term = dyn._terms(jax.random.key(0))
    y = dyn.init(None)
    if isinstance(y, tuple):
        y = (theta, y[1])
    else:
        y = theta

    def increment(dw):
        out = term.vf_prod(t, y, None, (jnp.zeros(()), dw))
        return out[0] if isinstance(out, tuple) else out

    return jax.jacfwd(increment)(jnp.zeros(problem.n_train))  # (P, N)


@pytest.mark.parametrize("batch_size", [2, 3])
def test_iid_diffusion_equals_enumerated_minibatch_covariance(tiny_mlp, batch_size):
    p, lr, scale = tiny_mlp, 0.3, 1.0
    theta = p.theta0 + 0.2 * jax.random.normal(jax.random.key(2), p.theta0.shape)
    g = np.asarray(p.per_sample_grads(theta))
    full = g.mean(0)
    diffs = [g[list(s)].mean(0) - full
             for s in itertools.combinations(range(p.n_train), batch_size)]
    exact = np.mean([np.outer(d, d) for d in diffs], axis=0) * lr**2
    noise = sdenet.Minibatch(batch_size, scale, "iid")
    gmap = np.asarray(_noise_map(p, noise, theta, lr))
    engine = gmap @ gmap.T
    rel = np.abs(engine - exact).max() / np.abs(exact).max()
    assert rel < 1e-5, rel
    # and the documented closed form η² s κ Σ / B
    sigma = np.asarray(p.gradient_covariance(theta))
    closed = lr**2 * noise.kappa(p.n_train) * sigma / batch_size
    assert np.abs(closed - exact).max() / np.abs(exact).max() < 1e-10


def test_scale_multiplies_covariance(tiny_mlp):
    p = tiny_mlp
    a = _noise_map(p, sdenet.Minibatch(2, 1.0), p.theta0, 0.1)
    b = _noise_map(p, sdenet.Minibatch(2, 4.0), p.theta0, 0.1)
    np.testing.assert_allclose(b, 2.0 * a, rtol=1e-12)


def _reshuffle_counts(n, b, rng, reps):
    """Centred counting process M_i(t) = N_i(t) − tB/N of real reshuffling, t=0..E."""
    e = n // b
    out = np.zeros((reps, e + 1, n))
    for r in range(reps):
        perm = rng.permutation(n)
        counts = np.zeros(n)
        for t in range(e):
            counts[perm[t * b:(t + 1) * b]] += 1
            out[r, t + 1] = counts - (t + 1) * b / n
    return out


def test_reshuffle_bridge_matches_counting_process(tiny_mlp):
    """The engine's bridge increments reproduce the covariance of real reshuffle counts.

    Compares Cov M(t) at every step of an epoch against the exact law
    (B/N) t (1 − t/E) N/(N−1) Π (which enumeration-free permutation sampling also
    checks), within 5 Monte Carlo standard errors; and the bridge returns to 0.
    """
    p = tiny_mlp
    n, b = p.n_train, 2
    e = n // b
    noise = sdenet.Minibatch(b, 1.0, "reshuffle")
    dyn = build_dynamics(p, noise, 0.1, save_every=1)
    a = noise.counting_scale(n)
    reps = 20000
    keys = jax.random.split(jax.random.key(3), reps)

    def epoch(key):
        term = dyn._terms(key)
        beta = jnp.zeros(n)
        ms = [jnp.zeros(n)]
        for t in range(e):
            _, dw = term.contr(float(t), float(t + 1))
            steps_left = e - t
            beta = beta - beta / steps_left + jnp.sqrt((steps_left - 1) / steps_left) * dw
            ms.append(a * (beta - beta.mean()))
        return jnp.stack(ms)

    sim = np.asarray(jax.vmap(epoch)(keys))
    assert np.abs(sim[:, -1]).max() < 1e-12
    real = _reshuffle_counts(n, b, np.random.default_rng(0), reps)
    pi = np.eye(n) - 1.0 / n
    for t in range(1, e):
        exact = (b / n) * t * (1 - t / e) * n / (n - 1) * pi
        for sample in (sim[:, t], real[:, t]):
            cov = np.cov(sample.T)
            se = np.sqrt((np.outer(np.diag(exact), np.diag(exact)) + exact**2) / reps)
            assert np.all(np.abs(cov - exact) < 5 * se)


def test_engine_bridge_term_is_the_one_tested(tiny_mlp):
    """The recursion in the test above is the engine's: compare one step."""
    p = tiny_mlp
    noise = sdenet.Minibatch(2, 1.0, "reshuffle")
    dyn = build_dynamics(p, noise, 0.1, save_every=1)
    term = dyn._terms(jax.random.key(0))
    beta = jnp.arange(p.n_train, dtype=float)
    dw = jnp.ones(p.n_train)
    _, dbeta = term.vf_prod(1.0, (p.theta0, beta), None, (jnp.zeros(()), dw))
    left = 2  # E = 3, one step done
    np.testing.assert_allclose(dbeta, -beta / left + np.sqrt((left - 1) / left) * dw)


def test_invalid_noise_parameters():
    with pytest.raises(ValueError, match="--sigma"):
        sdenet.Isotropic(-1.0)
    with pytest.raises(ValueError, match="--batch-size"):
        sdenet.Minibatch(0)
    with pytest.raises(ValueError, match="--sampling"):
        sdenet.Minibatch(2, sampling="bogus")
    assert isinstance(dfx.Euler(), dfx.AbstractSolver)
