"""The trajectory likelihood family: Euler–Maruyama and exact OU transitions, NUTS fits.

Exact checks (log densities) are compared to independent references — NumPyro's
`EulerMaruyama` distribution, explicit matrix exponentials / matrix power sums — to
1e-6 or better in float64. Statistical checks (recovery, calibration) use fixed keys;
their tolerances are argued in each docstring.
"""

import json
import time
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.linalg
import scipy.stats

import sdenet
from sdenet._fit import FitDiagnosticWarning, run_nuts
from sdenet._infer_trajectory import (
    _pointwise,
    em_transition_logpdf,
    fit_trajectory,
    is_linear_in_weights,
    ou_transition_logpdf,
    prepare_trajectory,
    trajectory_model,
    trajectory_pointwise,
)

LR = 0.1
OBS = sdenet.Observables(weights=True, train_points=(), test_points=())


def _random_path(problem, key, times, paths=3, scale=0.1):
    """Weights (paths, K+1, P): a random walk around θ0 (any path is a valid input)."""
    steps = scale * jax.random.normal(key, (paths, len(times), problem.n_params))
    return problem.theta0[None, None, :] + jnp.cumsum(steps, axis=1)


def _simulate(problem, noise, *, steps, paths, save_every, key):
    return sdenet.simulate(problem, noise, LR, steps, paths, key, save_every=save_every,
                           observables=OBS, progress=False)


def _config(idata):
    return json.loads(idata.posterior.attrs["sdenet_config"])


# ------------------------------------------------------------------ exact densities
@pytest.mark.parametrize("which", ["linear_problem", "tiny_mlp"])
def test_em_matches_numpyro_euler_maruyama(which, request):
    """(a) Σ_k log N(θ_{k+1} | θ_k − η∇L Δ_k, η² D² Δ_k) = EulerMaruyama.log_prob minus
    its initial-distribution term, on uneven checkpoints and per-weight σ."""
    p = request.getfixturevalue(which)
    times = jnp.array([0.0, 1.0, 2.5, 3.0, 5.0, 5.5])
    weights = _random_path(p, jax.random.key(1), times)
    sig = 0.05 + 0.3 * jax.random.uniform(jax.random.key(2), (p.n_params,))

    def sde_fn(y, t):
        return -LR * p.grad(y), LR * sig

    init = dist.Normal(jnp.zeros(p.n_params), 1.0).to_event(1)

    @jax.jit
    def reference(weights):
        with jax.numpy_rank_promotion("allow"):  # numpyro broadcasts (K, 1) over paths
            return (dist.EulerMaruyama(times, sde_fn, init).log_prob(weights)
                    - init.log_prob(weights[:, 0]))

    ref = reference(weights)
    ours = em_transition_logpdf(p, LR, weights, times, sig)
    assert ours.shape == (3,)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-6)
    # one path, pointwise terms sum to the total
    single = em_transition_logpdf(p, LR, weights[0], times, sig, pointwise=True)
    assert single.shape == (len(times) - 1,)
    np.testing.assert_allclose(jnp.sum(single), ref[0], rtol=1e-12, atol=1e-6)


@pytest.mark.parametrize("which", ["linear_problem", "tiny_mlp"])
def test_discrete_ou_single_step_is_em(which, request):
    """The exact Euler-chain transition (dt=h) over one step h is the EM transition,
    for any curvature (so also for the non-linear MLP)."""
    p = request.getfixturevalue(which)
    times = jnp.arange(6.0)
    weights = _random_path(p, jax.random.key(3), times)
    sig = 0.05 + 0.3 * jax.random.uniform(jax.random.key(4), (p.n_params,))
    em = em_transition_logpdf(p, LR, weights, times, sig, pointwise=True)
    ou = ou_transition_logpdf(p, LR, weights, times, sig, dt=1.0, pointwise=True)
    np.testing.assert_allclose(ou, em, rtol=1e-10, atol=1e-8)


def test_ou_converges_to_em_as_spacing_shrinks(linear_problem):
    """(b) Continuous-time OU transitions differ from EM by O(Δ): the per-transition
    difference shrinks ~10× when Δ does, and is tiny at Δ = 1e-3."""
    p = linear_problem
    sig = 0.3
    diffs = []
    for delta in (1e-2, 1e-3):
        times = delta * jnp.arange(11.0)
        weights = _random_path(p, jax.random.key(5), times, scale=LR * sig * delta**0.5)
        em = em_transition_logpdf(p, LR, weights, times, sig, pointwise=True)
        ou = ou_transition_logpdf(p, LR, weights, times, sig, pointwise=True)
        diffs.append(float(jnp.max(jnp.abs(ou - em))))
        assert np.all(np.isfinite(np.asarray(ou)))
    assert 5.0 < diffs[0] / diffs[1] < 20.0, diffs
    assert diffs[1] < 1e-2, diffs


def _explicit_transition(p, lr, theta, delta, diag, dt):
    """Mean and covariance of θ_{t+Δ} | θ_t for the quadratic `linear` loss, by brute
    force: Van Loan's matrix exponential (continuous) or explicit matrix powers (dt)."""
    a = np.asarray(jax.hessian(p.loss)(p.theta0))
    g = np.asarray(p.grad(jnp.asarray(theta)))
    theta_star = theta - np.linalg.solve(a, g)
    q = lr**2 * np.diag(np.asarray(diag) ** 2)
    n = a.shape[0]
    if dt is None:
        f = -lr * a
        block = np.block([[-f, q], [np.zeros((n, n)), f.T]]) * delta
        e = scipy.linalg.expm(block)
        phi = e[n:, n:].T
        cov = phi @ e[:n, n:]
    else:
        m = int(round(delta / dt))
        b = np.eye(n) - lr * dt * a
        phi = np.linalg.matrix_power(b, m)
        cov = sum(np.linalg.matrix_power(b, j) @ (dt * q) @ np.linalg.matrix_power(b, j).T
                  for j in range(m))
    return theta_star + phi @ (theta - theta_star), cov


def test_ou_handles_singular_curvature():
    """N = 4 < P = 9: A = JᵀJ/N has (numerically) zero eigenvalues; the flat directions
    must diffuse like Brownian motion (the K(r → 0) = Δ limit), not produce NaN."""
    p = sdenet.get_problem("linear", n_train=4, n_test=0)
    times = jnp.array([0.0, 1.0, 2.0, 12.0])
    weights = _random_path(p, jax.random.key(9), times)
    exact = jnp.zeros((p.n_params, p.n_params))  # A = 0: the OU transition is EM's
    em = em_transition_logpdf(p, LR, weights, times, 0.3, pointwise=True)
    ou0 = ou_transition_logpdf(p, LR, weights, times, 0.3, curvature=exact,
                               pointwise=True)
    np.testing.assert_allclose(ou0, em, rtol=1e-10)
    for dt in (None, 1.0):
        ou = ou_transition_logpdf(p, LR, weights, times, 0.3, dt=dt, pointwise=True)
        assert np.all(np.isfinite(np.asarray(ou)))
    np.testing.assert_allclose(ou[:, :2], em[:, :2], rtol=1e-9)  # one Euler step


@pytest.mark.parametrize("dt", [None, 1.0, 0.5], ids=["continuous", "euler-1", "euler-0.5"])
def test_ou_matches_explicit_gaussian_transition(linear_problem, dt):
    """Closed-form eigenbasis transitions = brute-force matrix formulas (layerwise D,
    spacings 10 and 4 steps) to 1e-8."""
    p = linear_problem
    times = jnp.array([0.0, 10.0, 20.0, 24.0])
    weights = _random_path(p, jax.random.key(6), times, paths=2, scale=0.3)
    diag = sdenet.Layerwise([0.5, 0.2]).diagonal(p)
    ours = ou_transition_logpdf(p, LR, weights, times, diag, dt=dt, pointwise=True)
    w = np.asarray(weights)
    for r in range(w.shape[0]):
        for k in range(len(times) - 1):
            mean, cov = _explicit_transition(p, LR, w[r, k], float(times[k + 1] - times[k]),
                                             diag, dt)
            ref = scipy.stats.multivariate_normal(mean, cov).logpdf(w[r, k + 1])
            np.testing.assert_allclose(ours[r, k], ref, rtol=1e-9, atol=1e-8)


def test_ou_rejects_spacing_not_multiple_of_dt(linear_problem):
    times = jnp.array([0.0, 1.5, 3.0])
    weights = _random_path(linear_problem, jax.random.key(0), times)
    with pytest.raises(ValueError, match="multiples of dt"):
        ou_transition_logpdf(linear_problem, LR, weights, times, 0.3, dt=1.0)
    with pytest.raises(ValueError, match="constant learning rate"):
        em_transition_logpdf(linear_problem, lambda k: 0.1, weights, times, 0.3)
    with pytest.raises(ValueError, match="shape"):
        em_transition_logpdf(linear_problem, LR, weights[..., :3], times, 0.3)


@pytest.mark.parametrize("family,noise", [("em", "isotropic"), ("em", "layerwise"),
                                          ("ou", "isotropic"), ("ou", "layerwise")])
def test_model_statistics_reproduce_the_densities(linear_problem, family, noise):
    """The sufficient statistics NUTS works on give exactly the direct log densities,
    and the NumPyro model's log joint is prior + their sum."""
    p = linear_problem
    times = jnp.array([0.0, 10.0, 20.0, 30.0, 35.0])
    weights = _random_path(p, jax.random.key(8), times, scale=0.2)
    sigma = jnp.array([0.4]) if noise == "isotropic" else jnp.array([0.5, 0.25])
    groups = np.zeros(p.n_params, int) if noise == "isotropic" else np.asarray(
        p.layer_ids())
    diag = sigma[groups]
    data = prepare_trajectory(p, LR, weights, times, family=family, noise=noise, dt=1.0)
    ll = trajectory_pointwise(sigma, data)
    if family == "em":
        ref = em_transition_logpdf(p, LR, weights, times, diag, pointwise=True)
    else:
        ref = ou_transition_logpdf(p, LR, weights, times, diag, dt=1.0, pointwise=True)
    np.testing.assert_allclose(ll, ref, rtol=1e-10, atol=1e-8)

    value = sigma[0] if noise == "isotropic" else sigma
    raw = {"weights": weights, "times": times}
    kwargs = dict(problem=p, lr=LR, family=family, noise=noise, dt=1.0)
    log_joint, trace = numpyro.infer.util.log_density(
        trajectory_model, (raw,), kwargs, {"sigma": value})
    prior = trace["sigma"]["fn"].log_prob(value)
    np.testing.assert_allclose(log_joint, prior + jnp.sum(ref), rtol=1e-10)


def test_is_linear_in_weights(linear_problem, tiny_mlp):
    assert is_linear_in_weights(linear_problem)
    assert not is_linear_in_weights(tiny_mlp)


# ------------------------------------------------------------------------ recovery
@pytest.mark.filterwarnings("ignore::sdenet._fit.FitDiagnosticWarning")
@pytest.mark.parametrize("family,noise,save_every", [
    ("ou", sdenet.Isotropic(0.3), 10),
    ("em", sdenet.Isotropic(0.3), 1),
    ("em", sdenet.Layerwise([0.2, 0.4]), 1),
], ids=["ou-isotropic", "em-isotropic", "em-layerwise"])
def test_recovers_sigma(linear_problem, family, noise, save_every):
    """(c) `linear`, η = 0.1, 8 paths × 200 steps; fit with NUTS (2 chains, 200/200).

    The likelihood is exact for these data (Euler paths with dt = 1: EM transitions
    when saved every step, the exact Euler-chain OU transitions when saved every 10),
    so the 90% interval misses the truth with probability 0.1 for a random key; the
    keys are fixed, so the test is deterministic. The intervals are ~2–6% of σ wide
    (1440–14400 Gaussian increments), so a wrong variance factor fails it, as does the
    EM pseudo-likelihood on the 10-step spacing (σ̂ ≈ 0.24 on these data). The O(ηλ)
    bias of the continuous-time OU likelihood on Euler data (+3%, about one half-width
    here) is why `fit_trajectory` uses the exact Euler-chain transitions (dt = 1).
    Also checks the sampler (r_hat, divergences) and the InferenceData layout."""
    p = linear_problem
    ds = _simulate(p, noise, steps=200, paths=8, save_every=save_every,
                   key=jax.random.key(11))
    kind = "isotropic" if isinstance(noise, sdenet.Isotropic) else "layerwise"
    idata = fit_trajectory(ds, p, LR, noise=kind, chains=2, warmup=200, samples=200,
                           seed=3)
    cfg = _config(idata)
    assert cfg["likelihood"] == family  # "auto" picked the exact family
    assert cfg["dt"] == (1.0 if family == "ou" else None)
    truth = np.atleast_1d(noise.sigma if kind == "isotropic" else noise.sigmas)
    lo, hi = np.quantile(idata.posterior["sigma"].values.reshape(400, -1), [0.05, 0.95],
                         axis=0)
    assert np.all((lo < truth) & (truth < hi)), (lo, hi, truth)
    assert cfg["diagnostics"]["max_rhat"] < 1.05
    assert cfg["diagnostics"]["divergences"] == 0
    k = ds.sizes["time"] - 1
    assert idata.log_likelihood["weights"].shape == (2, 200, 8, k)
    assert idata.posterior_predictive["residual_ss"].shape[:4] == (2, 200, 8, k)
    assert idata.observed_data["weights"].dims == ("path", "time", "weight")
    # predictive check: the replicated residual energy matches the observed one
    pred = float(idata.posterior_predictive["residual_ss"].mean())
    obs = float(idata.observed_data["residual_ss"].mean())
    assert abs(pred / obs - 1) < 0.05


@pytest.mark.filterwarnings("ignore::sdenet._fit.FitDiagnosticWarning")
def test_fit_mlp_auto_em_and_loo(tiny_mlp):
    """A non-linear problem: "auto" picks EM; LOO over transitions runs."""
    ds = _simulate(tiny_mlp, sdenet.Isotropic(0.05), steps=60, paths=4, save_every=2,
                   key=jax.random.key(12))
    idata = fit_trajectory(ds, tiny_mlp, chains=2, warmup=150, samples=150, seed=0)
    cfg = _config(idata)
    assert cfg["likelihood"] == "em" and cfg["lr"] == LR and not cfg["linear_in_weights"]
    assert 0.03 < float(idata.posterior["sigma"].median()) < 0.08
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)


def test_fit_trajectory_rejects_bad_input(linear_problem, tiny_mlp):
    ds = sdenet.simulate(linear_problem, sdenet.Isotropic(0.3), LR, 20, 2,
                         jax.random.key(0), save_every=10, progress=False)
    with pytest.raises(ValueError, match="Observables\\(weights=True\\)"):
        fit_trajectory(ds, linear_problem, LR)
    ds = _simulate(linear_problem, sdenet.Isotropic(0.3), steps=20, paths=2,
                   save_every=10, key=jax.random.key(0))
    with pytest.raises(ValueError, match="weights but the problem"):
        fit_trajectory(ds, tiny_mlp, LR)
    with pytest.raises(ValueError, match="family"):
        fit_trajectory(ds, linear_problem, LR, family="kalman")
    with pytest.raises(ValueError, match="noise"):
        fit_trajectory(ds, linear_problem, LR, noise="minibatch")


# --------------------------------------------------------------------- calibration
SBC_PRIOR_LOC, SBC_PRIOR_SCALE = np.log(0.3), 0.5


def _sbc_data(family, reps, seed):
    """σ_i ~ LogNormal(log 0.3, 0.5) and one `linear` ensemble (4 paths, 100 steps) per
    draw, simulated by `sdenet.simulate` (compiled once; σ is a traced leaf)."""
    p = sdenet.get_problem("linear")
    rng = np.random.default_rng(seed)
    sigmas = np.exp(SBC_PRIOR_LOC + SBC_PRIOR_SCALE * rng.standard_normal(reps))
    save_every = 10 if family == "ou" else 1
    key = jax.random.key(seed)
    sets = [_simulate(p, sdenet.Isotropic(float(s)), steps=100, paths=4,
                      save_every=save_every, key=jax.random.fold_in(key, i))
            for i, s in enumerate(sigmas)]
    return p, sigmas, sets


def _summarise(sigmas, draws, label):
    """Coverage of central 50% / 90% intervals and ranks of the truth among draws."""
    draws = np.asarray(draws)  # (reps, n)
    thin = draws[:, ::4]
    ranks = np.sum(thin < sigmas[:, None], axis=1)  # 0..L
    cover = {}
    for level in (0.5, 0.9):
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=1)
        cover[level] = float(np.mean((lo < sigmas) & (sigmas < hi)))
    hist = np.histogram(ranks, bins=5, range=(0, thin.shape[1] + 1))[0]
    print(f"\nSBC {label}: {len(sigmas)} replications, coverage 50%: {cover[0.5]:.2f}, "
          f"90%: {cover[0.9]:.2f}; rank histogram (5 bins) {hist.tolist()}")
    return cover, ranks


def _joint_sbc_model(stats, eta, family, loc, scale):
    """Independent replications in one NUTS run (stats stacked on a leading axis), with
    the likelihood code of `trajectory_model`: the joint posterior is the product of the
    per-replication posteriors, so each σ_i's marginal is exactly its own fit."""
    reps = stats["delta"].shape[0]
    with numpyro.plate("rep", reps):
        sigma = numpyro.sample("sigma", dist.LogNormal(loc, scale))
    ll = jax.vmap(lambda s, st: jnp.sum(_pointwise(s[None], st, eta, family, True)))(
        sigma, stats)
    numpyro.factor("loglik", jnp.sum(ll))


def _sbc_joint(family, reps, seed):
    p, sigmas, sets = _sbc_data(family, reps, seed)
    datas = [prepare_trajectory(p, LR, ds.weights.values, ds.time.values, family=family,
                                dt=1.0 if family == "ou" else None) for ds in sets]
    stats = {k: jnp.stack([jnp.asarray(d.stats[k]) for d in datas])
             for k in datas[0].stats}
    mcmc = run_nuts(_joint_sbc_model, {"stats": stats, "eta": LR, "family": family,
                                       "loc": SBC_PRIOR_LOC, "scale": SBC_PRIOR_SCALE},
                    chains=2, warmup=300, samples=200, seed=seed, dense_mass=False)
    return sigmas, np.asarray(mcmc.get_samples()["sigma"]).T


@pytest.mark.parametrize("family", ["em", "ou"])
def test_sbc_smoke(family):
    """(d, CI size) 10 replications fitted jointly in one NUTS run (one compilation);
    checks the machinery and that coverage is not absurd: a calibrated 90% interval
    covers ≥ 5 of 10 with probability > 0.9998."""
    t0 = time.time()
    sigmas, draws = _sbc_joint(family, 10, seed=101)
    cover, _ = _summarise(sigmas, draws, f"{family} (joint, {time.time() - t0:.0f} s)")
    assert cover[0.9] >= 0.5


@pytest.mark.slow
@pytest.mark.parametrize("family", ["em", "ou"])
def test_sbc_calibration(family):
    """(d) Simulation-based calibration through the user path: 100 replications, each
    σ drawn from the prior, simulated, fitted by `fit_trajectory` (2 chains, 300/200).

    Coverage of the central 50% and 90% intervals must be within ±8 percentage points:
    binomial standard errors are 5.0 and 3.0 points, so 1.6 and 2.7 SE (fixed seed).
    Also prints the rank histogram (uniform if calibrated). ~5 min per family on 2 cores.
    """
    t0 = time.time()
    p, sigmas, sets = _sbc_data(family, 100, seed=202)
    prior = {"sigma": dist.LogNormal(SBC_PRIOR_LOC, SBC_PRIOR_SCALE)}
    draws = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitDiagnosticWarning)
        for i, ds in enumerate(sets):
            idata = fit_trajectory(ds, p, LR, family=family, chains=2, warmup=300,
                                   samples=200, seed=i, priors=prior)
            draws.append(idata.posterior["sigma"].values.reshape(-1))
            if i % 20 == 19:  # every NUTS run leaves ~25 MB in JAX's caches
                jax.clear_caches()
    cover, ranks = _summarise(sigmas, np.stack(draws),
                              f"{family} (fit_trajectory, {time.time() - t0:.0f} s)")
    assert abs(cover[0.5] - 0.5) <= 0.08
    assert abs(cover[0.9] - 0.9) <= 0.08
