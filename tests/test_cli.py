"""The command line: outputs, exit codes, and never a half-written file."""

import json

import pytest
import xarray as xr

from sdenet._cli import main

TINY = ["--problem", "mlp-sine", "--n-train", "8", "--n-test", "4", "--width", "4",
        "--steps", "20", "--save-every", "5", "--quiet"]


def test_problems_lists_every_builtin(capsys):
    assert main(["problems"]) == 0
    out = capsys.readouterr().out
    for name in ("linear", "random-features", "mlp-sine", "teacher-student", "diabetes"):
        assert name in out


@pytest.mark.parametrize("noise", [["--noise", "isotropic", "--sigma", "0.1"],
                                   ["--noise", "layerwise", "--sigma", "0.1,0.2"],
                                   ["--noise", "minibatch", "--batch-size", "2",
                                    "--sampling", "reshuffle"]])
def test_simulate_writes_netcdf_with_config(tmp_path, noise, capsys):
    out = tmp_path / "sim.nc"
    assert main(["simulate", *TINY, *noise, "--paths", "3", "--seed", "4",
                 "--out", str(out)]) == 0
    ds = xr.load_dataset(out)
    assert ds.train_loss.dims == ("path", "time")
    cfg = json.loads(ds.attrs["config"])
    assert cfg["noise"]["model"] == noise[1] and cfg["steps"] == 20
    assert ds.attrs["seed"] == 4 and "diffrax" in json.loads(ds.attrs["versions"])
    assert "wrote" in capsys.readouterr().out


def test_sgd_stats_only(tmp_path):
    out = tmp_path / "sgd.nc"
    assert main(["sgd", *TINY, "--batch-size", "4", "--runs", "4", "--stats-only",
                 "--out", str(out)]) == 0
    ds = xr.load_dataset(out)
    assert "train_loss_mean" in ds and "path" not in ds.dims


@pytest.mark.parametrize("argv, needle", [
    (["simulate", "--lr", "-1"], "--lr"),
    (["simulate", "--problem", "nope"], "--problem"),
    (["simulate", "--noise", "layerwise", "--sigma", "0.1"], "layers"),
    (["simulate", "--solver", "shark"], "additive"),
    (["sgd", "--sampling", "reshuffle", "--batch-size", "3"], "divide"),
    (["simulate", "--save-every", "7"], "--save-every"),
    (["simulate", "--steps", "x"], "invalid int"),
    (["simulate", "--train-points", "99"], "train_points"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, needle):
    out = tmp_path / "keep.nc"
    out.write_text("precious")
    code = main([*argv[:1], *TINY, *argv[1:], "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and err.count("\n") == 1, err
    assert out.read_text() == "precious"


def test_divergence_exits_3_names_step_and_bound(tmp_path, capsys):
    out = tmp_path / "keep.nc"
    out.write_text("precious")
    code = main(["simulate", "--problem", "linear", "--noise", "isotropic", "--lr", "1000",
                 "--steps", "200", "--paths", "2", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 3
    assert "by step" in err and "2/λ_max" in err
    assert out.read_text() == "precious"
    assert list(tmp_path.iterdir()) == [out]


def test_failed_write_keeps_existing_file(tmp_path, monkeypatch):
    """A crash while writing leaves the old file intact and no temporary behind."""
    out = tmp_path / "keep.nc"
    out.write_text("precious")

    def explode(self, path, *a, **k):
        with open(path, "w") as fh:
            fh.write("half")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", explode)
    with pytest.raises(OSError):
        main(["sgd", *TINY, "--runs", "2", "--batch-size", "4", "--out", str(out)])
    assert out.read_text() == "precious"
    assert list(tmp_path.iterdir()) == [out]


def test_fit_trajectory_from_simulate(tmp_path, capsys):
    sim = tmp_path / "sim.nc"
    assert main(["simulate", "--problem", "linear", "--noise", "isotropic", "--sigma", "0.3",
                 "--lr", "0.1", "--steps", "100", "--save-every", "10", "--paths", "4",
                 "--weights", "--quiet", "--out", str(sim)]) == 0
    post = tmp_path / "post.nc"
    assert main(["fit", str(sim), "--model", "trajectory", "--chains", "2", "--warmup",
                 "100", "--samples", "100", "--quiet", "--out", str(post)]) == 0
    assert "sigma" in capsys.readouterr().out and post.exists()
    assert main(["fit", str(sim), "--model", "loss-curve", "--out", str(post)]) == 2
