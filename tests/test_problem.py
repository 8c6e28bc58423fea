import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdenet
from conftest import cached_problem


@pytest.mark.parametrize("name", list(sdenet.PROBLEMS))
def test_builtin_problems_build(name):
    p = cached_problem(name, n_train=8, n_test=4) if name != "diabetes" else \
        cached_problem(name, n_train=20, n_test=10)
    theta = p.theta0
    assert p.train_output(theta).shape == (p.n_train,)
    assert np.isfinite(float(p.loss(theta)))
    assert p.layer_ids().shape == theta.shape


def test_derivatives_agree(tiny_mlp):
    p = tiny_mlp
    theta = p.theta0 + 0.1 * jax.random.normal(jax.random.key(1), p.theta0.shape)
    g = p.per_sample_grads(theta)
    np.testing.assert_allclose(g.mean(0), p.grad(theta), rtol=1e-10, atol=1e-12)
    c = jnp.linspace(0.1, 1.0, p.n_train)
    np.testing.assert_allclose(p.weighted_loss_grad(theta, c), c @ g, rtol=1e-10)
    k = p.ntk(theta, p.x_train, p.x_test)
    j1, j2 = p.jacobian(theta, p.x_train), p.jacobian(theta, p.x_test)
    np.testing.assert_allclose(k, j1 @ j2.T, rtol=1e-12)
    v = jnp.ones_like(theta)
    hess = jax.hessian(lambda t: p.train_output(t))(theta)  # (N, P, P)
    np.testing.assert_allclose(p.output_hvp(theta, p.x_train, v), hess @ v, rtol=1e-9,
                               atol=1e-12)
    full_h = jax.hessian(p.loss)(theta)
    np.testing.assert_allclose(p.loss_hvp(theta, v), full_h @ v, rtol=1e-9, atol=1e-12)
    assert p.max_curvature(theta) == pytest.approx(float(jnp.linalg.eigvalsh(full_h)[-1]),
                                                   rel=1e-3)


def test_user_equinox_model():
    model = eqx.nn.MLP(2, "scalar", 5, 1, key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_array)

    def apply(params, x):
        return jax.vmap(eqx.combine(params, static))(x)

    x = jax.random.normal(jax.random.key(1), (10, 2))
    p = sdenet.Problem(apply, params, x, jnp.sin(x[:, 0]), name="eqx-mlp")
    ds = sdenet.simulate(p, sdenet.Isotropic(0.01), 0.1, 10, 3, jax.random.key(0),
                         save_every=5, progress=False)
    assert ds.train_loss.shape == (3, 3)


def test_problem_rejects_bad_shapes():
    with pytest.raises(ValueError, match="x_train has 3 rows"):
        sdenet.Problem(lambda p, x: x @ p, jnp.ones(2), jnp.ones((3, 2)), jnp.ones(4))
    with pytest.raises(ValueError, match="must return shape"):
        sdenet.Problem(lambda p, x: jnp.ones((x.shape[0], 3)), jnp.ones(2),
                       jnp.ones((3, 2)), jnp.ones(3))


def test_reflected_problem_is_the_same_problem_in_minus_theta(tiny_mlp):
    """The antithetic twin: same losses and gradients up to sign at θ' = −θ."""
    mirror = tiny_mlp.reflected()
    theta = tiny_mlp.theta0 + 0.1
    np.testing.assert_allclose(mirror.loss(-theta), tiny_mlp.loss(theta), rtol=1e-12)
    np.testing.assert_allclose(mirror.grad(-theta), -tiny_mlp.grad(theta), rtol=1e-10)
