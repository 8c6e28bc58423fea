"""`fit`: NUTS over a likelihood family, returning an ArviZ InferenceData."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import NamedTuple

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS

from ._artefact import versions, write_atomic

FAMILIES = ("scaling", "loss-curve", "trajectory")


class FitDiagnosticWarning(UserWarning):
    """NUTS diagnostics are bad (r_hat > 1.01, low ESS or divergences)."""


def run_nuts(model, model_kwargs, *, chains=4, warmup=500, samples=500, seed=0,
             progress=False, target_accept=0.9, init_strategy=None, dense_mass=True,
             max_tree_depth=8, laplace=None):
    """Run NUTS; chains are vectorised (one XLA program) unless devices allow parallel.

    ``laplace``: a `Laplace` approximation of the posterior (see `map_estimate`). Then
    its covariance is the (fixed) inverse mass matrix and the chains start at
    independent draws from it. NumPyro's adapted mass matrix is regularised towards
    10⁻³·I, which swamps parameters whose posterior variance is ≪ 10⁻³ (the loss floor
    L* is known to ~10⁻⁴ on real logs) and drives every trajectory to the tree-depth
    limit; the Laplace covariance has no such floor.
    """
    from numpyro.infer import init_to_median

    extra = {}
    if laplace is not None:
        extra = dict(inverse_mass_matrix=laplace.cov, adapt_mass_matrix=False)
    kernel = NUTS(model, target_accept_prob=target_accept, dense_mass=dense_mass,
                  max_tree_depth=max_tree_depth,
                  init_strategy=init_strategy or init_to_median(num_samples=15), **extra)
    method = "parallel" if len(jax.devices()) >= chains > 1 else "vectorized"
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=chains,
                chain_method=method, progress_bar=progress)
    init_params = None
    if laplace is not None:
        init_params = laplace.draws(jax.random.PRNGKey(seed + 1), chains)
        if chains == 1:  # MCMC takes unbatched initial values for a single chain
            init_params = jax.tree_util.tree_map(lambda x: x[0], init_params)
    mcmc.run(jax.random.PRNGKey(seed), init_params=init_params, extra_fields=(
        "diverging", "num_steps", "accept_prob", "potential_energy"), **model_kwargs)
    return mcmc


class Laplace(NamedTuple):
    """Gaussian approximation at the posterior mode in NumPyro's unconstrained space."""

    mode: dict  # constrained values of the sample (and deterministic) sites
    z: jax.Array  # flat unconstrained mode
    cov: jax.Array  # inverse Hessian of the potential there
    unravel: Callable

    def draws(self, key, n):
        """n draws (a leading chain axis) in unconstrained space, as MCMC init_params."""
        chol = jnp.linalg.cholesky(self.cov)
        eps = jax.random.normal(key, (n, self.z.shape[0]), self.z.dtype)
        return jax.vmap(self.unravel)(self.z[None, :] + eps @ chol.T)


def map_estimate(model, model_kwargs, *, init_strategy, seed=0, max_iter=500,
                 laplace=False):
    """The posterior mode (MAP) by BFGS in NumPyro's unconstrained space.

    Returns the constrained sample sites (deterministic sites included); used as the
    pilot of the working-covariance likelihoods (`_infer_ar`). With ``laplace=True``
    returns a `Laplace` (mode + inverse Hessian of the potential, eigenvalues clipped
    positive) instead.
    """
    from jax.flatten_util import ravel_pytree
    from jax.scipy.optimize import minimize
    from numpyro.infer.util import initialize_model

    info, potential, postprocess, _ = initialize_model(
        jax.random.PRNGKey(seed), model, init_strategy=init_strategy,
        model_kwargs=model_kwargs)
    flat, unravel = ravel_pytree(info.z)
    fn = jax.jit(lambda x: potential(unravel(x)))
    result = minimize(fn, flat, method="BFGS", options={"maxiter": max_iter})
    best = result.x
    if not (bool(jnp.all(jnp.isfinite(best))) and fn(best) <= fn(flat)
            and bool(jnp.isfinite(fn(best)))):
        best = _adam(fn, flat)  # BFGS's line search can run away on ridges
    if not bool(jnp.isfinite(fn(best))):
        best = flat
    if not laplace:
        return postprocess(unravel(best))
    hess = jax.hessian(lambda x: potential(unravel(x)))(best)
    lam, vec = jnp.linalg.eigh(0.5 * (hess + hess.T))
    lam = jnp.clip(lam, 1e-12 * jnp.max(jnp.abs(lam)) + 1e-300, None)
    cov = (vec / lam[None, :]) @ vec.T
    return Laplace(postprocess(unravel(best)), best, 0.5 * (cov + cov.T), unravel)


def _adam(fn, x0, steps=3000, lr=0.01):
    """A robust fallback minimiser (optax Adam in a compiled loop), keeping the best."""
    import optax

    opt = optax.adam(lr)
    grad = jax.value_and_grad(fn)

    def body(carry, _):
        x, state, best, best_f = carry
        f, g = grad(x)
        g = jnp.where(jnp.isfinite(g), g, 0.0)
        better = jnp.isfinite(f) & (f < best_f)
        best, best_f = jnp.where(better, x, best), jnp.where(better, f, best_f)
        updates, state = opt.update(g, state)
        return (optax.apply_updates(x, updates), state, best, best_f), None

    carry = (x0, opt.init(x0), x0, fn(x0))
    (_, _, best, _), _ = jax.lax.scan(body, carry, None, length=steps)
    return best


def diagnostics(idata, var_names=None) -> dict:
    """Worst r_hat, smallest bulk/tail ESS and the number of divergences."""
    post = idata.posterior
    names = var_names or [v for v in post.data_vars if post[v].ndim <= 3]
    rhat = az.rhat(post, var_names=names)
    ess_bulk = az.ess(post, var_names=names, method="bulk")
    ess_tail = az.ess(post, var_names=names, method="tail")

    def extreme(ds, fn):
        vals = [float(fn(ds[v].values)) for v in ds.data_vars if ds[v].size]
        return fn(np.asarray(vals)) if vals else float("nan")

    div = int(idata.sample_stats["diverging"].sum()) if "diverging" in \
        idata.sample_stats else 0
    return {"max_rhat": float(extreme(rhat, np.nanmax)),
            "min_ess_bulk": float(extreme(ess_bulk, np.nanmin)),
            "min_ess_tail": float(extreme(ess_tail, np.nanmin)),
            "divergences": div,
            "draws": int(post.sizes["chain"] * post.sizes["draw"])}


def warn_on_diagnostics(diag: dict) -> list[str]:
    """Warn (FitDiagnosticWarning) on r_hat > 1.01, ESS < 100 or any divergence."""
    msgs = []
    if not diag["max_rhat"] <= 1.01:
        msgs.append(f"r_hat up to {diag['max_rhat']:.3f} > 1.01: chains disagree; run "
                    "more warm-up/samples or check the model")
    if not diag["min_ess_bulk"] >= 100:
        msgs.append(f"bulk ESS as low as {diag['min_ess_bulk']:.0f} < 100: posterior "
                    "summaries are imprecise; run more samples")
    if diag["divergences"]:
        msgs.append(f"{diag['divergences']} divergent transitions: the posterior "
                    "geometry is hard; results may be biased (raise target_accept)")
    for m in msgs:
        warnings.warn(m, FitDiagnosticWarning, stacklevel=3)
    return msgs


def stamp(idata, config: dict):
    """Record configuration, versions and diagnostics in every group's attrs."""
    attrs = {"sdenet_config": json.dumps(config, sort_keys=True, default=repr),
             "sdenet_versions": json.dumps(versions(), sort_keys=True)}
    for group in idata.groups():
        idata[group].attrs.update(attrs)
    return idata


def write_posterior(idata, path) -> str:
    """Save InferenceData to netCDF atomically (temporary file, then rename)."""
    return write_atomic(path, idata.to_netcdf, ".nc.tmp")


def sample_stats(mcmc) -> dict:
    """NUTS sample statistics (chain, draw) for ArviZ: divergences, tree sizes, …"""
    extra = mcmc.get_extra_fields(group_by_chain=True)
    return {k: np.asarray(extra[k]) for k in ("diverging", "num_steps", "accept_prob",
                                               "potential_energy") if k in extra}


def loss_curve_idata(posterior, stats, ll, mean, pred, *, y, mask, lr, batch_size,
                     step, names, coords=None, dims=None):
    """InferenceData of a loss-curve fit over padded runs (R, T) and draws.

    ``ll``, ``mean``, ``pred``: (chain, draw, R, T) pointwise log-likelihood, mean curve
    and posterior-predictive draws. Padded points (``mask`` False) are NaN in the curves
    and left out of the log-likelihood, so LOO runs over the real log points only.
    """
    idata = az.from_dict(
        posterior={k: np.asarray(v) for k, v in posterior.items()},
        sample_stats=stats,
        log_likelihood={"loss": ll[:, :, mask]},
        posterior_predictive={"loss": np.where(mask, pred, np.nan),
                              "mean_curve": np.where(mask, mean, np.nan)},
        observed_data={"loss": np.where(mask, y, np.nan)},
        constant_data={"lr": lr, "batch_size": batch_size,
                       "step": np.asarray(step, float)},
        coords={"run": list(names), "log_point": np.arange(y.shape[1]),
                "point": np.arange(int(mask.sum()))} | (coords or {}),
        dims={"loss": ["run", "log_point"], "mean_curve": ["run", "log_point"],
              "step": ["run", "log_point"], "lr": ["run"],
              "batch_size": ["run"]} | (dims or {}),
    )
    idata.log_likelihood["loss"] = idata.log_likelihood["loss"].rename(
        {idata.log_likelihood["loss"].dims[-1]: "point"})
    return idata


def pointwise_over_draws(fn, samples: dict, *args, chunk=200):
    """Apply ``fn(params, *args)`` to every posterior draw (vmapped in chunks)."""
    flat = {k: jnp.asarray(v).reshape((-1,) + v.shape[2:]) for k, v in samples.items()}
    n = next(iter(flat.values())).shape[0]
    outs = []
    f = jax.jit(jax.vmap(lambda p: fn(p, *args)))
    for start in range(0, n, chunk):
        outs.append(jax.tree_util.tree_map(
            np.asarray, f({k: v[start:start + chunk] for k, v in flat.items()})))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *outs)
