"""`closure`: analytic mean and variance of the network output under SGD noise.

Gaussian output moments give the expected losses exactly (for n outputs u = z − y with
mean μ and covariance V):

    E L   = (1/2n) (‖μ‖² + tr V)
    Var L = (1/4n²) (2 tr V² + 4 μᵀ V μ)
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ._artefact import with_provenance
from ._closure_first import first_order
from ._noise import AbstractNoise, Isotropic
from ._problem import Problem
from ._sde import _check_times
from ._schedule import as_learning_rate


@eqx.filter_jit
def _train_ntk(problem, theta):
    """Θ(X_train, X_train) at θ (compiled once per problem)."""
    return problem.ntk(theta, problem.x_train, problem.x_train)


def _loss_moments(mu, v, y):
    u = mu - y[None, :]
    n = y.shape[0]
    diag = jnp.diagonal(v, axis1=1, axis2=2)
    mean = (jnp.sum(u**2, axis=1) + jnp.sum(diag, axis=1)) / (2 * n)
    var = (2 * jnp.sum(v * v, axis=(1, 2)) + 4 * jnp.einsum("ti,tij,tj->t", u, v, u)) / (
        4 * n**2)
    gradient_flow = jnp.sum(u**2, axis=1) / (2 * n)
    return mean, var, gradient_flow


def moments_dataset(problem, times, mu, v, config, covariance=False, extra=None):
    """Package output moments (train then test) into the closure Dataset layout."""
    n, m = problem.n_train, problem.n_test
    mu, v = jnp.asarray(mu), jnp.asarray(v)
    var = jnp.diagonal(v, axis1=1, axis2=2)
    data = {
        "train_output_mean": (("time", "train_point"), mu[:, :n]),
        "train_output_var": (("time", "train_point"), var[:, :n]),
    }
    lm, lv, lgf = _loss_moments(mu[:, :n], v[:, :n, :n], problem.y_train)
    data |= {"train_loss_mean": ("time", lm), "train_loss_var": ("time", lv),
             "train_loss_mean_field": ("time", lgf)}
    if m:
        data |= {"test_output_mean": (("time", "test_point"), mu[:, n:]),
                 "test_output_var": (("time", "test_point"), var[:, n:])}
        tm, tv, tgf = _loss_moments(mu[:, n:], v[:, n:, n:], problem.y_test)
        data |= {"test_loss_mean": ("time", tm), "test_loss_var": ("time", tv),
                 "test_loss_mean_field": ("time", tgf)}
    if covariance:
        data["output_cov"] = (("time", "output", "output_b"), v)
    for name, value in (extra or {}).items():
        data[name] = value
    data = {k: (d, np.asarray(x)) for k, (d, x) in data.items()}
    coords = {"time": ("time", np.asarray(times), {"units": "SGD steps"}),
              "train_point": np.arange(n)}
    if m:
        coords["test_point"] = np.arange(m)
    ds = xr.Dataset(data, coords=coords)
    ds["train_target"] = ("train_point", np.asarray(problem.y_train))
    if m:
        ds["test_target"] = ("test_point", np.asarray(problem.y_test))
    ds["train_loss_mean_field"].attrs["description"] = (
        "loss of the mean output, ½‖E f − y‖²/n (gradient flow at first order)")
    return ds


def closure(
    problem: Problem,
    noise: AbstractNoise,
    lr: float,
    steps: int,
    *,
    order: int = 1,
    save_every: int | None = None,
    theta0=None,
    covariance: bool = False,
    seed: int | None = None,
    **second_order_options,
) -> xr.Dataset:
    """Propagate the mean and variance of the network output under SGD noise.

    **Arguments:**

    - `problem`, `noise`, `lr` (constant), `steps`, `save_every`: as `simulate`.
    - `order`: 1 = linearised network (exact for it); 2 = quadratic Taylor expansion
      with Gaussian closure (`second_order_options`: `expand`, `curvature`, `dt`).
    - `theta0`: the expansion point and start (e.g. trained weights); default θ0.
    - `covariance`: also return the full output covariance `output_cov`.

    **Returns:** a Dataset in the layout of `simulate` without the `path` dim:
    `train_output_mean/var`, `test_output_mean/var`, `train_loss_mean/var`,
    `test_loss_mean/var`, and `*_loss_mean_field` (the loss of the mean output).
    """
    steps, save_every = _check_times(steps, save_every, 1.0)
    if callable(lr):
        raise ValueError("the closure supports a constant --lr only (no schedules).")
    if not isinstance(noise, AbstractNoise):
        raise ValueError(f"noise must be Isotropic, Layerwise or Minibatch; got {noise!r}.")
    noise.check(problem)
    dtype = problem.theta0.dtype
    lr_value = as_learning_rate(lr, dtype)
    theta_e = problem.theta0 if theta0 is None else jnp.asarray(theta0, dtype)
    times = jnp.arange(0, steps + 1, save_every, dtype=dtype)
    config = {"kind": "closure", "order": order, "problem": problem.config,
              "noise": noise.to_config(), "lr": float(lr), "steps": steps,
              "save_every": save_every, "custom_theta0": theta0 is not None}
    if order == 1:
        if second_order_options:
            raise ValueError(f"options {sorted(second_order_options)} apply to --order 2 only.")
        mu, v = first_order(problem, noise, lr_value, times, theta_e)
        ds = moments_dataset(problem, times, mu, v, config, covariance)
    elif order == 2:
        from ._closure_second import second_order

        mu, v, extra, info = second_order(problem, noise, lr_value, times, theta_e,
                                          **second_order_options)
        config |= {k: v_ for k, v_ in info.items() if k != "warnings"}
        ds = moments_dataset(problem, times, mu, v, config, covariance, extra)
        ds.attrs["domain_warnings"] = "; ".join(info.get("warnings", [])) or "none"
    else:
        raise ValueError(f"--order must be 1 or 2, got {order}.")
    if isinstance(noise, Isotropic):
        ds.attrs["ntk_rank"] = int(np.linalg.matrix_rank(np.asarray(
            _train_ntk(problem, theta_e))))
    return with_provenance(ds, config, seed)
