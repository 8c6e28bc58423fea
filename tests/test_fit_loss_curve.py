"""The loss-curve family: exact loss moments of the SGD chain, the fit and its checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import sdenet
import sdenet._infer_loss_curve
from sdenet._cli import main
from sdenet._logs import LogError, Run
from sdenet._loss_moments import combine, loss_moments, noise_terms

LR, STEPS, EVERY = 0.05, 100, 5
OBS = sdenet.Observables(train_points=(), test_points=())


def _moments(problem, noise, steps, lr=LR):
    kind, basis = noise_terms(problem, noise)
    kb = noise.kappa(problem.n_train) / noise.batch_size if kind == "minibatch" else 0.0
    return loss_moments(problem, problem.theta0, jnp.asarray(lr), jnp.asarray(steps),
                        kind, jnp.asarray(basis), jnp.asarray(kb))


@pytest.mark.parametrize("noise", [sdenet.Minibatch(8), sdenet.Isotropic(0.3)],
                         ids=["minibatch", "isotropic"])
def test_loss_moments_match_monte_carlo(linear_problem, noise):
    """E L, Var L and Cov(L_k, L_{k−1}) of the closure's discrete chain against 4000
    real SGD runs (minibatch) or Euler–Maruyama dt = 1 paths (isotropic, the same
    chain) on `linear`: every log point within 4 Monte Carlo standard errors (SEs of
    sample moments from the sample fourth moments; fixed key). E L is exact for both;
    Var L and the lag covariance are exact for isotropic noise (Gaussian outputs) but
    use Gaussian fourth moments for minibatch noise, whose skewed, discrete sampling
    noise puts them up to ~10% off early in training: allowance 15% (measured)."""
    key = jax.random.key(3)
    if isinstance(noise, sdenet.Minibatch):
        ds = sdenet.sgd(linear_problem, noise.batch_size, LR, STEPS, 4000, key,
                        save_every=EVERY, observables=OBS, progress=False)
        c = [1.0, 1.0, 1.0]
    else:
        ds = sdenet.simulate(linear_problem, noise, LR, STEPS, 4000, key, solver="euler",
                             dt=1.0, save_every=EVERY, observables=OBS, progress=False)
        c = [noise.sigma**2]
    loss = ds.train_loss.values
    mean, var, cov = (np.asarray(x) for x in combine(
        _moments(linear_problem, noise, ds.time.values.astype(int)), jnp.asarray(c)))
    n = loss.shape[0]
    d = loss - loss.mean(0)
    se_mean = loss.std(0) / np.sqrt(n)
    assert np.all(np.abs(mean - loss.mean(0)) < 4 * se_mean + 1e-12)
    closure_error = 0.15 if isinstance(noise, sdenet.Minibatch) else 0.0
    sq = d**2
    se_var = sq.std(0) / np.sqrt(n)
    mc_var = sq.mean(0)[1:]
    assert np.all(np.abs(var[1:] - mc_var) < 4 * se_var[1:] + closure_error * mc_var)
    lag = d[:, 1:] * d[:, :-1]
    se_lag = lag.std(0) / np.sqrt(n)
    mc_lag = lag.mean(0)
    assert np.all(np.abs(cov[1:] - mc_lag) < 4 * se_lag + closure_error * mc_lag)
    assert cov[0] == 0.0


def test_minibatch_series_terms_shrink(linear_problem):
    """The s-expansion of the feedback converges fast: each order ≪ the previous."""
    mom = _moments(linear_problem, sdenet.Minibatch(4), np.arange(0, 201, 20))
    last = np.asarray(mom.mean1[:, -1])
    assert last[1] < 0.1 * last[0] and last[2] < 0.1 * last[1]


@pytest.fixture(scope="module")
def sgd_logs(linear_problem, tmp_path_factory):
    """Long-format CSV of 8 real SGD runs (2 η × 2 B × 2 seeds) of `linear`."""
    rows = ["run,step,loss,lr,batch_size"]
    runs = []
    for lr in (0.02, 0.05):
        for b in (4, 16):
            ds = sdenet.sgd(linear_problem, b, lr, 300, 2, jax.random.key(b), save_every=5,
                            observables=OBS, progress=False)
            for k in range(2):
                name = f"lr{lr}-B{b}-{k}"
                runs.append(Run(name, ds.time.values.astype(float),
                                ds.train_loss.values[k], None,
                                {"lr": lr, "batch_size": b}))
                rows += [f"{name},{t},{float(v)!r},{lr},{b}" for t, v in
                         zip(ds.time.values, ds.train_loss.values[k])]
    path = tmp_path_factory.mktemp("lc") / "sgd.csv"
    path.write_text("\n".join(rows) + "\n")
    return path, runs


def test_cli_fit_loss_curve(sgd_logs, tmp_path, capsys):
    """`sdenet fit --model loss-curve` end to end on real SGD logs (CI-sized NUTS)."""
    path, _ = sgd_logs
    out = tmp_path / "post.nc"
    code = main(["fit", str(path), "--model", "loss-curve", "--problem", "linear",
                 "--chains", "1", "--warmup", "150", "--samples", "100", "--quiet",
                 "--full-batch-loss", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "noise minibatch" in text and "wrote" in text
    post = xr.open_dataset(out, group="posterior")
    s = post["s"].values.ravel()
    assert '"family": "loss-curve"' in post.attrs["sdenet_config"]
    post.close()
    # a loose physical check (the calibrated statement is the SBC below): SGD's own
    # noise scale is 1, and the data exclude s ≤ 0.5 or s ≥ 2 by far
    assert 0.5 < np.median(s) < 2.0
    pp = xr.open_dataset(out, group="posterior_predictive")
    assert pp["loss"].shape[-2:] == (8, 61)
    pp.close()


def test_loss_curve_rejects_bad_input(sgd_logs, tmp_path, capsys):
    _, runs = sgd_logs
    wrong = sdenet.get_problem("linear", dim=4)
    with pytest.raises(LogError, match="does not come from this problem"):
        sdenet.fit(runs, "loss-curve", problem=wrong, observation_noise=False)
    minibatch = [Run(r.name, r.step, r.loss * 1.05, None, r.meta) for r in runs]
    sdenet._infer_loss_curve.prepare_loss_curve(  # within a minibatch loss's spread
        minibatch, sdenet.get_problem("linear"), minibatch_logs=True)
    half = [Run(r.name, r.step + 0.5, r.loss, None, r.meta) for r in runs]
    with pytest.raises(LogError, match="integer SGD steps"):
        sdenet.fit(half, "loss-curve", problem=sdenet.get_problem("linear"))
    no_b = [Run(r.name, r.step, r.loss, None, {"lr": r.lr}) for r in runs]
    with pytest.raises(LogError, match="lr and batch_size"):
        sdenet.fit(no_b, "loss-curve", problem=sdenet.get_problem("linear"))
    with pytest.raises(ValueError, match="needs the problem"):
        sdenet.fit(runs, "loss-curve")
    path, _ = sgd_logs
    out = tmp_path / "p.nc"
    code = main(["fit", str(path), "--model", "loss-curve", "--problem", "linear",
                 "--n-train", "32", "--full-batch-loss", "--out", str(out)])
    assert code == 2 and not out.exists()
    assert "does not come from this problem" in capsys.readouterr().err
