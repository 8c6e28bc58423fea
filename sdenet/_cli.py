"""The ``sdenet`` command line.

Exit codes: 0 success, 2 invalid input (flags, values, files), 3 a diverging run.
"""

from __future__ import annotations

import argparse
import sys
import time

EXIT_INPUT = 2
EXIT_DIVERGED = 3


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message):
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _problem_flags(p):
    g = p.add_argument_group("problem")
    g.add_argument("--problem", default="linear",
                   help="built-in problem (see `sdenet problems`; default linear)")
    g.add_argument("--n-train", type=int, help="number of training points N")
    g.add_argument("--n-test", type=int, help="number of test points M")
    g.add_argument("--width", type=int, help="hidden width")
    g.add_argument("--depth", type=int, help="number of hidden layers")
    g.add_argument("--dim", type=int, help="input dimension (linear, teacher-student)")
    g.add_argument("--activation", help="tanh, relu, gelu, erf, softplus, linear")
    g.add_argument("--parametrisation", choices=["standard", "ntk"])
    g.add_argument("--data-seed", type=int, help="seed of the data and initial weights")
    g.add_argument("--x64", action="store_true", help="compute in float64")
    g.add_argument("--start", choices=["init", "trained"], default="init",
                   help="start at the initial weights or at weights trained by "
                   "full-batch gradient descent (near a minimum)")
    g.add_argument("--start-lr", type=float,
                   help="learning rate of the descent to the trained start "
                   "(default 1/λ_max)")
    g.add_argument("--start-steps", type=int, default=5000,
                   help="gradient-descent steps to the trained start (default 5000)")


def _training_flags(p, paths_name):
    g = p.add_argument_group("training")
    g.add_argument("--lr", type=float, default=0.05, help="learning rate η (default 0.05)")
    g.add_argument("--schedule", default="constant",
                   help="constant, cosine, exponential or warmup-cosine (optax)")
    g.add_argument("--steps", type=int, default=1000, help="SGD steps (default 1000)")
    g.add_argument("--save-every", type=int, help="record every k steps (default steps/100)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument(f"--{paths_name}", type=int, default=100,
                   help=f"number of {paths_name} in the ensemble (default 100)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--stats-only", action="store_true",
                   help="keep only ensemble mean/variance per save (memory-lean)")
    g.add_argument("--train-points", help="comma-separated train indices to record "
                   "outputs at (default all; 'none' for none)")
    g.add_argument("--test-points", help="as --train-points, for test points")
    g.add_argument("--hessian-trace", action="store_true",
                   help="record a Hutchinson estimate of tr ∇²L")
    g.add_argument("--weights", action="store_true",
                   help="record the flat weights (for `sdenet fit --model trajectory`)")
    g.add_argument("--out", required=True, help="output netCDF file")
    g.add_argument("--quiet", action="store_true", help="no progress output")


def _noise_flags(p):
    g = p.add_argument_group("noise")
    g.add_argument("--noise", choices=["isotropic", "layerwise", "minibatch"],
                   default="minibatch")
    g.add_argument("--sigma", default="0.01",
                   help="σ (isotropic) or comma-separated σ_l (layerwise)")
    _batch_flags(g)
    g.add_argument("--scale", type=float, default=1.0, help="minibatch scale s (1 = SGD)")
    return g


def _batch_flags(p):
    p.add_argument("--batch-size", type=int, default=8, help="minibatch size B (default 8)")
    p.add_argument("--sampling", choices=["iid", "reshuffle"], default="iid",
                   help="iid minibatches or per-epoch random reshuffling")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sdenet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("problems", help="list the built-in problems")

    p = sub.add_parser("demo", help="the whole story on the default problem -> HTML report")
    p.add_argument("--out", default="sdenet-demo", help="output folder (default sdenet-demo)")
    p.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("report", help="HTML page of figures for sdenet artefacts")
    p.add_argument("files", nargs="+", help="netCDF artefacts (ensembles, closures, "
                   "posteriors)")
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("simulate", help="SDE ensemble of SGD (diffrax) -> netCDF")
    _problem_flags(p)
    g = _noise_flags(p)
    g.add_argument("--solver", default="euler", help="euler, heun, sra1, shark")
    g.add_argument("--dt", type=float, default=1.0, help="solver step in SGD steps")
    g.add_argument("--sme", action="store_true",
                   help="second-order SME drift correction −(η²/4)∇‖∇L‖²")
    _training_flags(p, "paths")

    p = sub.add_parser("sgd", help="real minibatch SGD runs (optax) -> netCDF")
    _problem_flags(p)
    _batch_flags(p)
    _training_flags(p, "runs")

    p = sub.add_parser("closure", help="analytic output mean/variance -> netCDF")
    _problem_flags(p)
    g = _noise_flags(p)
    g = p.add_argument_group("closure")
    g.add_argument("--order", type=int, choices=[1, 2], default=1)
    g.add_argument("--expand", choices=["initial", "mean"], default="mean",
                   help="second order: expand at θ0 or re-expand at the running mean")
    g.add_argument("--curvature", choices=["hessian", "psd", "gauss-newton"],
                   default="hessian", help="second order: curvature in the covariance "
                   "equation")
    g.add_argument("--dt", type=float, default=1.0, help="second order: step (SGD steps)")
    g.add_argument("--covariance", action="store_true",
                   help="also store the full output covariance")
    g = p.add_argument_group("training")
    g.add_argument("--lr", type=float, default=0.05, help="learning rate η (default 0.05)")
    g.add_argument("--steps", type=int, default=1000, help="SGD steps (default 1000)")
    g.add_argument("--save-every", type=int, help="record every k steps (default steps/100)")
    g.add_argument("--seed", type=int, default=0, help="recorded only (the closure is "
                   "deterministic)")
    g.add_argument("--out", required=True, help="output netCDF file")

    p = sub.add_parser("fit", help="fit a noise model to training logs (NumPyro NUTS)")
    p.add_argument("logs", nargs="+", help="CSV/TSV/JSONL logs (run,step,loss[,lr,"
                   "batch_size,test_loss]) or ensembles from `sdenet sgd`")
    p.add_argument("--model", choices=["scaling", "loss-curve", "trajectory"],
                   default="scaling")
    p.add_argument("--modes", default="auto",
                   help="OU modes of the scaling model, or 'auto' (LOO over 1..3)")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1000,
                   help="NUTS warm-up steps per chain (default 1000: the scaling "
                   "posterior has a long L*–F0 ridge)")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-col", default="step")
    p.add_argument("--loss-col", default="loss")
    p.add_argument("--run-col", default="run")
    p.add_argument("--lr", type=float, help="learning rate of runs without an lr column")
    p.add_argument("--batch-size", type=float,
                   help="batch size of runs without a batch_size column")
    p.add_argument("--out", required=True, help="posterior netCDF (ArviZ InferenceData)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--full-batch-loss", action="store_true",
                   help="the logged loss is the full-batch train loss: no observation "
                   "noise term (default for sdenet's .nc files; text logs are assumed "
                   "to hold minibatch losses)")
    p.add_argument("--noise", choices=["minibatch", "isotropic", "layerwise"],
                   default="minibatch", help="loss-curve: the noise model whose "
                   "parameters are fitted (s, σ or σ_l; default minibatch)")
    _problem_flags(p)  # loss-curve and trajectory: the problem the logs come from

    p = sub.add_parser("compare", help="closure vs ensemble: error table and figure")
    p.add_argument("ensemble", help="netCDF from `sdenet simulate` or `sdenet sgd`")
    p.add_argument("closure", help="netCDF from `sdenet closure`")
    p.add_argument("--out", help="figure file (PNG); omitted: table only")
    return parser


def _indices(text):
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"point indices must be comma-separated integers, got {text!r}.")


def _problem(args):
    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    from ._problems import get_problem

    return get_problem(
        args.problem, n_train=args.n_train, n_test=args.n_test, width=args.width,
        depth=args.depth, dim=args.dim, activation=args.activation,
        parametrisation=args.parametrisation, seed=args.data_seed,
    )


def _start(args, problem):
    """None (the problem's θ0) or weights trained by gradient descent."""
    if args.start == "init":
        return None
    from ._start import trained_weights

    lr = args.start_lr
    if lr is None:
        lr = 1.0 / problem.max_curvature()
    if args.start_steps < 1:
        raise ValueError(f"--start-steps must be ≥ 1, got {args.start_steps}.")
    return trained_weights(problem, lr, args.start_steps)


def _noise(args):
    from ._noise import Isotropic, Layerwise, Minibatch

    if args.noise == "minibatch":
        return Minibatch(args.batch_size, args.scale, args.sampling)
    try:
        sigmas = [float(v) for v in args.sigma.split(",")]
    except ValueError:
        raise ValueError(f"--sigma must be a number or comma-separated numbers, "
                         f"got {args.sigma!r}.")
    if args.noise == "isotropic":
        if len(sigmas) != 1:
            raise ValueError("--noise isotropic takes a single --sigma value.")
        return Isotropic(sigmas[0])
    return Layerwise(sigmas)


def _common(args, problem):
    from ._observables import Observables
    from ._schedule import make_schedule

    if args.steps < 1:
        raise ValueError(f"--steps must be ≥ 1, got {args.steps}.")
    lr = make_schedule(args.schedule, args.lr, args.steps)
    obs = Observables(train_points=_indices(args.train_points),
                      test_points=_indices(args.test_points),
                      hessian_trace=args.hessian_trace, weights=args.weights)
    obs.indices(problem)
    return lr, obs


def _summary(ds, out, seconds):
    name = "train_loss_mean" if "train_loss_mean" in ds else "train_loss"
    loss = ds[name]
    final = float(loss.isel(time=-1).mean()) if name == "train_loss" else float(
        loss.isel(time=-1))
    print(f"wrote {out}: {ds.attrs.get('kind')} ensemble of {ds.attrs.get('n_paths')} "
          f"paths, {ds.sizes['time']} saves; final mean train loss {final:.6g} "
          f"({seconds:.1f} s)")


def _cmd_problems(args):
    from ._problems import PROBLEMS

    width = max(map(len, PROBLEMS))
    for name, entry in PROBLEMS.items():
        print(f"{name:<{width}}  {entry.summary}")


def _cmd_simulate(args):
    import jax

    from ._artefact import write_netcdf
    from ._sde import simulate

    problem = _problem(args)
    lr, obs = _common(args, problem)
    start = time.perf_counter()
    ds = simulate(problem, _noise(args), lr, args.steps, args.paths,
                  jax.random.key(args.seed), save_every=args.save_every, dt=args.dt,
                  solver=args.solver, sme_correction=args.sme,
                  weight_decay=args.weight_decay, observables=obs,
                  theta0=_start(args, problem),
                  stats_only=args.stats_only, progress=not args.quiet, seed=args.seed)
    write_netcdf(ds, args.out)
    _summary(ds, args.out, time.perf_counter() - start)


def _cmd_sgd(args):
    import jax

    from ._artefact import write_netcdf
    from ._sgd import sgd

    problem = _problem(args)
    lr, obs = _common(args, problem)
    start = time.perf_counter()
    ds = sgd(problem, args.batch_size, lr, args.steps, args.runs,
             jax.random.key(args.seed), sampling=args.sampling,
             save_every=args.save_every, weight_decay=args.weight_decay,
             observables=obs, theta0=_start(args, problem), stats_only=args.stats_only, progress=not args.quiet,
             seed=args.seed)
    write_netcdf(ds, args.out)
    _summary(ds, args.out, time.perf_counter() - start)


def _cmd_closure(args):
    import warnings

    from ._artefact import write_netcdf
    from ._closure import closure

    problem = _problem(args)
    noise = _noise(args)
    options = {}
    if args.order == 2:
        options = dict(expand=args.expand, curvature=args.curvature, dt=args.dt)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = closure(problem, noise, args.lr, args.steps, order=args.order,
                     save_every=args.save_every, theta0=_start(args, problem),
                     covariance=args.covariance, seed=args.seed, **options)
    for w in caught:
        print(f"sdenet closure: warning: {w.message}", file=sys.stderr)
    write_netcdf(ds, args.out)
    print(f"wrote {args.out}: order-{args.order} closure, {ds.sizes['time']} saves; "
          f"final expected train loss {float(ds.train_loss_mean[-1]):.6g} "
          f"({time.perf_counter() - start:.1f} s)")


def _cmd_compare(args):
    from ._artefact import read_netcdf
    from ._compare import compare, format_table

    sim, clo = read_netcdf(args.ensemble), read_netcdf(args.closure)
    rows = compare(sim, clo)
    print(format_table(rows))
    if args.out:
        from ._plots import compare_figure, save_figure

        save_figure(compare_figure(sim, clo), args.out)
        print(f"wrote {args.out}")


def _cmd_fit(args):
    import warnings

    import arviz as az
    import jax

    jax.config.update("jax_enable_x64", True)  # NUTS energies over many log points

    from ._fit import write_posterior
    from ._fit_logs import fit
    from ._logs import read_logs

    if args.model == "trajectory":
        return _fit_trajectory(args)
    defaults = {k: v for k, v in (("lr", args.lr), ("batch_size", args.batch_size))
                if v is not None}
    runs = read_logs(args.logs, step_col=args.step_col, loss_col=args.loss_col,
                     run_col=args.run_col, defaults=defaults)
    modes = args.modes if args.modes == "auto" else _positive_int(args.modes, "--modes")
    extra = {}
    if args.model == "loss-curve":
        problem = _problem(args)
        extra = dict(problem=problem, noise=args.noise, theta0=_start(args, problem))
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idata = fit(runs, args.model, modes=modes, chains=args.chains,
                    warmup=args.warmup, samples=args.samples, seed=args.seed,
                    progress=not args.quiet,
                    observation_noise=False if args.full_batch_loss else None, **extra)
    names = [v for v in ("L_star", "alpha", "beta", "F0", "rate", "s", "sigma", "obs_sd")
             if v in idata.posterior]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        print(az.summary(idata, var_names=names, hdi_prob=0.9).to_string())
    import json

    cfg = json.loads(idata.posterior.attrs["sdenet_config"])
    d = cfg["diagnostics"]
    what = f"modes K = {cfg['modes']}" if "modes" in cfg else f"noise {cfg['noise']}"
    print(f"{what}; max r_hat {d['max_rhat']:.3f}, min bulk ESS "
          f"{d['min_ess_bulk']:.0f}, divergences {d['divergences']} "
          f"({time.perf_counter() - start:.1f} s)")
    for w in caught:
        if "Diagnostic" in type(w.message).__name__:
            print(f"sdenet fit: warning: {w.message}", file=sys.stderr)
    write_posterior(idata, args.out)
    print(f"wrote {args.out}")


def _fit_trajectory(args):
    """Fit σ from recorded weight trajectories of a built-in problem's ensemble."""
    import arviz as az

    from ._artefact import config_of, read_netcdf
    from ._fit import write_posterior
    from ._infer_trajectory import fit_trajectory
    from ._problems import get_problem

    if len(args.logs) != 1 or not args.logs[0].endswith(".nc"):
        raise ValueError("--model trajectory takes one netCDF ensemble written by "
                         "`sdenet simulate`/`sdenet sgd` with --weights.")
    ds = read_netcdf(args.logs[0])
    if "weights" not in ds:
        raise ValueError(f"{args.logs[0]}: no recorded weights; rerun with --weights.")
    cfg = dict(config_of(ds).get("problem", {}))
    problem = get_problem(cfg.pop("name", "?"), **cfg)
    start = time.perf_counter()
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idata = fit_trajectory(ds, problem, args.lr, chains=args.chains,
                               warmup=args.warmup, samples=args.samples, seed=args.seed,
                               progress=not args.quiet)
    for w in caught:
        if "Diagnostic" in type(w.message).__name__:
            print(f"sdenet fit: warning: {w.message}", file=sys.stderr)
    print(az.summary(idata, var_names=["sigma"], hdi_prob=0.9).to_string())
    print(f"({time.perf_counter() - start:.1f} s)")
    write_posterior(idata, args.out)
    print(f"wrote {args.out}")


def _positive_int(text, flag):
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{flag} must be a positive integer or 'auto', got {text!r}.")
    if value < 1:
        raise ValueError(f"{flag} must be ≥ 1, got {value}.")
    return value


def _cmd_demo(args):
    from ._demo import demo

    index = demo(args.out, quick=args.quick, seed=args.seed)
    print(f"wrote {index}")


def _cmd_report(args):
    from ._report import report

    index = report(args.files, args.out)
    print(f"wrote {index}")


COMMANDS = {
    "demo": _cmd_demo,
    "report": _cmd_report,
    "fit": _cmd_fit,
    "closure": _cmd_closure,
    "compare": _cmd_compare,
    "problems": _cmd_problems,
    "simulate": _cmd_simulate,
    "sgd": _cmd_sgd,
}


def main(argv=None) -> int:
    """Entry point of the ``sdenet`` console script; returns the exit code."""
    from ._errors import DivergenceError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        COMMANDS[args.command](args)
    except DivergenceError as err:
        print(f"sdenet {args.command}: error: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        print(f"sdenet {args.command}: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
