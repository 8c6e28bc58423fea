"""First-order closure against Monte Carlo SDE ensembles and closed forms.

Monte Carlo tolerance: 4 standard errors (mean: sqrt(V/n); variance: sqrt(2V²/(n−1)),
both from the closure's own variance) on 8 train + 8 test points × 4 times per case
(128 comparisons: expected false-failure rate ≈ 1%), fixed keys. SDE ensembles use
dt = 0.1 so the discretisation bias (≈ dt·ηλ/2 of the variance) stays < 0.5 SE.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdenet
from conftest import cached_problem

PATHS, LR, STEPS, SAVE = 2000, 0.1, 100, 25
POINTS = tuple(range(0, 64, 8))


@pytest.mark.parametrize("name", ["linear", "random-features"])
@pytest.mark.parametrize("noise", [sdenet.Isotropic(0.3), "layerwise", sdenet.Minibatch(4)],
                         ids=["isotropic", "layerwise", "minibatch"])
def test_first_order_matches_sde_ensemble(name, noise):
    p = cached_problem(name)
    if noise == "layerwise":
        noise = sdenet.Layerwise([0.4, 0.2][: p.n_layers] if p.n_layers == 2 else [0.3])
    pts = tuple(i for i in POINTS if i < p.n_train)
    lr = LR if name == "linear" else 0.5
    closure = sdenet.closure(p, noise, lr, STEPS, save_every=SAVE)
    solver = "euler" if isinstance(noise, sdenet.Minibatch) else "sra1"
    sim = sdenet.simulate(p, noise, lr, STEPS, PATHS, jax.random.key(11), save_every=SAVE,
                          dt=0.1, solver=solver,
                          observables=sdenet.Observables(train_points=pts, test_points=pts),
                          progress=False)
    for split in ("train", "test"):
        mc = sim[f"{split}_output"].isel(time=slice(1, None))
        c_mean = closure[f"{split}_output_mean"].isel(time=slice(1, None),
                                                      **{f"{split}_point": list(pts)})
        c_var = closure[f"{split}_output_var"].isel(time=slice(1, None),
                                                    **{f"{split}_point": list(pts)})
        z_mean = (mc.mean("path").values - c_mean.values) / np.sqrt(c_var.values / PATHS)
        z_var = (mc.var("path", ddof=1).values - c_var.values) / np.sqrt(
            2 * c_var.values**2 / (PATHS - 1))
        assert np.abs(z_mean).max() < 4, (split, np.abs(z_mean).max())
        assert np.abs(z_var).max() < 4, (split, np.abs(z_var).max())


def test_zero_noise_is_gradient_flow(tiny_mlp):
    p = tiny_mlp
    theta = p.theta0
    lr, steps = 0.3, 50
    ds = sdenet.closure(p, sdenet.Isotropic(0.0), lr, steps, save_every=10)
    theta_ntk = p.ntk(theta, p.x_train, p.x_train)
    u0 = p.train_output(theta) - p.y_train
    lam, u = jnp.linalg.eigh(theta_ntk)
    for t, row in zip(ds.time.values, ds.train_output_mean.values):
        expected = p.y_train + u @ (jnp.exp(-lr * lam * t / p.n_train) * (u.T @ u0))
        np.testing.assert_allclose(row, expected, rtol=0, atol=1e-6)
    assert np.all(ds.train_output_var.values == 0)


def test_isotropic_loss_floor(linear_problem):
    """E L_∞ − L(gradient flow)_∞ = η σ² rank(Θ)/4."""
    p, lr, sigma = linear_problem, 0.1, 0.2
    ds = sdenet.closure(p, sdenet.Isotropic(sigma), lr, 4000, save_every=4000)
    excess = float(ds.train_loss_mean[-1] - ds.train_loss_mean_field[-1])
    assert ds.attrs["ntk_rank"] == 9
    assert excess == pytest.approx(lr * sigma**2 * 9 / 4, rel=1e-8)


def test_reshuffle_refused(linear_problem):
    with pytest.raises(ValueError, match="reshuffl"):
        sdenet.closure(linear_problem, sdenet.Minibatch(4, sampling="reshuffle"), 0.1, 10)
