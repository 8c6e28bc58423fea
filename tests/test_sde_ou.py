"""`linear` + additive noise is an Ornstein–Uhlenbeck process: check the ensemble.

dθ = −η(Aθ − c) dt + η D dW  has mean θ* + e^{−ηAt}(θ0 − θ*) and covariance
C(t) = V [ (Vᵀ η² D² V)_kl (1 − e^{−η(λ_k+λ_l)t}) / (η(λ_k + λ_l)) ] Vᵀ.
Tolerance: 4.5 Monte Carlo standard errors per entry (exact SEs of Gaussian
moments), fixed keys; ~100 checks per case keeps the false-failure rate < 0.1%.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdenet

LR, STEPS, SAVE, PATHS = 0.1, 100, 25, 4000


def _ou_moments(problem, diag, times):
    a = np.asarray(jax.hessian(problem.loss)(problem.theta0 * 0))
    c = -np.asarray(problem.grad(problem.theta0 * 0))
    theta_star = np.linalg.solve(a, c)
    lam, v = np.linalg.eigh(a)
    q = v.T @ np.diag(LR**2 * np.asarray(diag) ** 2) @ v
    theta0 = np.asarray(problem.theta0)
    out = []
    for t in times:
        mean = theta_star + v @ (np.exp(-LR * lam * t) * (v.T @ (theta0 - theta_star)))
        s = LR * (lam[:, None] + lam[None, :])
        cov = v @ (q * (1 - np.exp(-s * t)) / s) @ v.T
        out.append((mean, cov))
    return out


@pytest.mark.parametrize("noise", [sdenet.Isotropic(0.3), sdenet.Layerwise([0.5, 0.2])],
                         ids=["isotropic", "layerwise"])
def test_linear_isotropic_is_ou(linear_problem, noise):
    p = linear_problem
    ds = sdenet.simulate(p, noise, LR, STEPS, PATHS, jax.random.key(42),
                         save_every=SAVE, dt=0.1, solver="sra1",
                         observables=sdenet.Observables(weights=True, train_points=(),
                                                        test_points=()),
                         progress=False)
    w = ds.weights.values  # (path, time, weight)
    times = ds.time.values[1:]
    for k, (mean, cov) in enumerate(_ou_moments(p, noise.diagonal(p), times), start=1):
        sample = w[:, k]
        se_mean = np.sqrt(np.diag(cov) / PATHS)
        z_mean = (sample.mean(0) - mean) / se_mean
        assert np.all(np.abs(z_mean) < 4.5), z_mean
        se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / PATHS)
        z_cov = (np.cov(sample.T) - cov) / se_cov
        assert np.all(np.abs(z_cov) < 4.5), np.abs(z_cov).max()


def test_euler_step_time_matches_discrete_recursion(linear_problem):
    """With dt = 1, Euler–Maruyama is the exact discrete recursion
    m ← m − η(Am − c),  C ← (I − ηA) C (I − ηA)ᵀ + η² σ² I."""
    p, sigma = linear_problem, 0.3
    ds = sdenet.simulate(p, sdenet.Isotropic(sigma), LR, STEPS, PATHS, jax.random.key(7),
                         save_every=STEPS,
                         observables=sdenet.Observables(weights=True, train_points=(),
                                                        test_points=()),
                         progress=False)
    a = np.asarray(jax.hessian(p.loss)(jnp.zeros_like(p.theta0)))
    c = -np.asarray(p.grad(jnp.zeros_like(p.theta0)))
    m, cov = np.asarray(p.theta0), np.zeros_like(a)
    step = np.eye(len(a)) - LR * a
    for _ in range(STEPS):
        m = m - LR * (a @ m - c)
        cov = step @ cov @ step.T + LR**2 * sigma**2 * np.eye(len(a))
    sample = ds.weights.values[:, -1]
    assert np.all(np.abs(sample.mean(0) - m) / np.sqrt(np.diag(cov) / PATHS) < 4.5)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / PATHS)
    assert np.all(np.abs(np.cov(sample.T) - cov) / se_cov < 4.5)
