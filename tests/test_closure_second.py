"""Second-order Gaussian closure."""

import jax
import numpy as np
import pytest

import sdenet
from conftest import cached_problem


@pytest.mark.parametrize("expand", ["initial", "mean"])
def test_linear_model_reduces_to_first_order(linear_problem, expand):
    """H = 0: with additive noise the second-order closure is the exact first-order one;
    with Minibatch noise (state-dependent Q, frozen over a step) it converges to it
    with order 1 in the step dt."""
    p = linear_problem
    noise = sdenet.Isotropic(0.2)
    one = sdenet.closure(p, noise, 0.1, 60, save_every=20)
    two = sdenet.closure(p, noise, 0.1, 60, save_every=20, order=2, expand=expand)
    np.testing.assert_allclose(two.train_output_mean, one.train_output_mean, rtol=1e-8)
    np.testing.assert_allclose(two.test_output_var, one.test_output_var, rtol=1e-8)
    assert np.allclose(two.train_output_shift, 0, atol=1e-12)
    noise = sdenet.Minibatch(8)
    one = sdenet.closure(p, noise, 0.1, 60, save_every=20)
    errors = []
    for dt in (0.5, 0.25):
        two = sdenet.closure(p, noise, 0.1, 60, save_every=20, order=2, expand=expand,
                             dt=dt)
        np.testing.assert_allclose(two.train_output_mean, one.train_output_mean,
                                   rtol=1e-8)
        errors.append(float(np.max(np.abs(two.test_output_var / one.test_output_var - 1)
                                   [1:])))
    assert errors[1] < 0.02 and 1.6 < errors[0] / errors[1] < 2.4, errors


@pytest.fixture(scope="module")
def near_minimum():
    p = cached_problem("mlp-sine", width=8, n_train=16, n_test=16)
    theta = sdenet.trained_weights(p, 0.2, 20000)
    return p, theta


def test_second_order_beats_first_near_a_minimum(near_minimum):
    """Started at GD-converged weights with small σ: the second-order mean error is
    below the first-order one (in Monte Carlo standard errors of an 8 000-path SDE
    ensemble) and its noise-induced shift has the Monte Carlo direction (corr ≥ 0.8).
    The shift is E f_σ − E f_0, both from ensembles with common random numbers."""
    p, theta = near_minimum
    noise, lr, steps, paths = sdenet.Isotropic(0.02), 0.1, 400, 8000
    one = sdenet.closure(p, noise, lr, steps, save_every=100, theta0=theta)
    two = sdenet.closure(p, noise, lr, steps, save_every=100, theta0=theta, order=2)
    sim = sdenet.simulate(p, noise, lr, steps, paths, jax.random.key(1), save_every=100,
                          theta0=theta, dt=0.5, solver="sra1", stats_only=True,
                          progress=False)
    flow = sdenet.simulate(p, sdenet.Isotropic(0.0), lr, steps, 2, jax.random.key(1),
                           save_every=100, theta0=theta, dt=0.5, solver="sra1",
                           stats_only=True, progress=False)
    se = np.sqrt(sim.test_output_var.values[-1] / paths)
    err1 = np.abs(one.test_output_mean.values[-1] - sim.test_output_mean.values[-1]) / se
    err2 = np.abs(two.test_output_mean.values[-1] - sim.test_output_mean.values[-1]) / se
    assert np.sqrt(np.mean(err2**2)) < 0.5 * np.sqrt(np.mean(err1**2)), (err1, err2)
    mc_shift = sim.test_output_mean.values[-1] - flow.test_output_mean.values[-1]
    shift = two.test_output_shift.values[-1]
    assert np.corrcoef(mc_shift, shift)[0, 1] >= 0.8


def test_random_init_warns_out_of_domain():
    p = cached_problem("mlp-sine", width=8, n_train=16, n_test=16)
    with pytest.warns(sdenet.ClosureDomainWarning):
        ds = sdenet.closure(p, sdenet.Isotropic(0.05), 0.1, 200, save_every=50, order=2)
    assert ds.attrs["domain_warnings"] != "none"


def test_too_many_parameters_refused():
    p = cached_problem("linear", dim=2001, n_train=4, n_test=0)
    with pytest.raises(ValueError, match="P = 2002"):
        sdenet.closure(p, sdenet.Isotropic(0.1), 0.1, 10, order=2)
