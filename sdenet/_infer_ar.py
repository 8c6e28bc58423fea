"""A moment-matched Gaussian AR(1) likelihood for autocorrelated log residuals.

The fluctuation of a logged loss around its mean is a sum of K squared-OU modes plus
independent observation noise. sdenet replaces it by the Gaussian Markov process with
the same marginal variance V_k at every log point and the same lag-1 covariance
c_k = Σ_j ρ_jk √(v_jk v_j,k−1) (ρ_jk = e^{−r_j Δt_k}), so that

    e_k | e_{k−1} ~ N( (c_k / V_{k−1}) e_{k−1},  V_k − c_k² / V_{k−1} ),

fully vectorised over log points (no sequential Kalman filter). It reproduces the
variance and one-step autocorrelation exactly; longer lags decay as the product of
one-step correlations (exact for K = 1 without observation noise). Consecutive points
are therefore never treated as independent.
"""

from __future__ import annotations

import jax.numpy as jnp


def ar1_logpdf(resid, mode_var, mode_rho, obs_var, mask):
    """Pointwise log density of residuals under the moment-matched AR(1) surrogate.

    resid: (R, T) residuals; mode_var: (R, T, K) variances v_jk; mode_rho: (R, T, K)
    one-step correlations ρ_jk between point k−1 and k (ignored at k = 0); obs_var:
    (R, 1) or scalar independent observation-noise variance; mask: (R, T) bool.
    Returns (R, T) log densities (0 where masked).
    """
    var = jnp.sum(mode_var, axis=-1) + obs_var
    sd_modes = jnp.sqrt(mode_var + 1e-30)
    cov = jnp.sum(mode_rho[:, 1:] * sd_modes[:, 1:] * sd_modes[:, :-1], axis=-1)
    prev_var = var[:, :-1]
    coef = cov / prev_var
    cond_var = jnp.maximum(var[:, 1:] - cov * coef, 1e-12 * var[:, 1:])
    cond_mean = coef * resid[:, :-1]
    first = -0.5 * (jnp.log(2 * jnp.pi * var[:, :1]) + resid[:, :1] ** 2 / var[:, :1])
    rest = -0.5 * (jnp.log(2 * jnp.pi * cond_var)
                   + (resid[:, 1:] - cond_mean) ** 2 / cond_var)
    out = jnp.concatenate([first, rest], axis=1)
    return jnp.where(mask, out, 0.0)
