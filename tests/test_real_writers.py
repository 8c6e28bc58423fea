"""Logs written by the frameworks' own writers, read by `read_logs` and `sdenet fit`.

Keras 3 ``CSVLogger`` during a real ``model.fit`` (JAX backend) and tensorboardX's
``SummaryWriter`` (scalars and hparams of real SGD runs) read back by the TensorBoard
reader. Skipped where keras / tensorboardX / tensorboard are not installed
(``pip install -e ".[test]"`` installs them). Fits are CI-sized: one chain, few draws.
"""

import json
import os
import warnings

import jax
import numpy as np
import pytest

import sdenet
from sdenet._cli import main
from sdenet._logs import read_logs

CHEAP_FIT = ["--modes", "1", "--chains", "1", "--warmup", "60", "--samples", "40",
             "--seed", "0", "--quiet"]


def _keras(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # read when keras is first imported
    keras = pytest.importorskip("keras", minversion="3")
    if keras.backend.backend() != "jax":
        pytest.skip("keras was imported earlier with another backend")
    return keras


def _keras_runs(keras, folder, configs, epochs=16):
    """Train a linear Dense model per (lr, batch_size); log with CSVLogger."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5], "float32")
         + 0.3 * rng.normal(size=64).astype("float32"))[:, None]
    histories = {}
    for lr, b in configs:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
        path = folder / f"keras-lr{lr}-B{b}.csv"
        with jax.numpy_rank_promotion("allow"):  # Keras broadcasts ranks (conftest raises)
            history = model.fit(x, y, batch_size=b, epochs=epochs, verbose=0,
                                callbacks=[keras.callbacks.CSVLogger(str(path))])
        (folder / f"keras-lr{lr}-B{b}.meta.json").write_text(
            json.dumps({"lr": lr, "batch_size": b}))
        histories[path.stem] = history.history["loss"]
    return histories


def test_keras_csvlogger_read_and_fit(tmp_path, capsys, monkeypatch):
    keras = _keras(monkeypatch)
    folder = tmp_path / "keras"
    folder.mkdir()
    histories = _keras_runs(keras, folder, [(0.02, 8), (0.05, 16)])
    runs = read_logs([str(folder)], step_col="epoch")
    assert sorted(r.name for r in runs) == sorted(f"{k}.csv:0" for k in histories)
    for r in runs:
        stem = r.name.removesuffix(".csv:0")
        np.testing.assert_allclose(r.loss, histories[stem], rtol=1e-6)
        np.testing.assert_array_equal(r.step, np.arange(16))
        assert f"lr{r.lr}-B{int(r.batch_size)}" in stem
    # the default step column is absent: exit 2 naming the columns Keras writes
    out = tmp_path / "post.nc"
    assert main(["fit", str(folder), *CHEAP_FIT, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "missing column(s) step" in err and "epoch, loss" in err and not out.exists()
    assert main(["fit", str(folder), "--step-col", "epoch", *CHEAP_FIT,
                 "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and out.exists()


def _tensorboardx():
    pytest.importorskip("tensorboard")
    return pytest.importorskip("tensorboardX").SummaryWriter


def test_tensorboardx_summary_writer_read_and_fit(tmp_path, capsys, linear_problem):
    writer_class = _tensorboardx()
    obs = sdenet.Observables(train_points=(), test_points=())
    folder = tmp_path / "tb"
    truth = {}
    for lr, b in [(0.02, 8), (0.04, 32)]:
        ds = sdenet.sgd(linear_problem, b, lr, 800, 1, jax.random.key(b), save_every=20,
                        observables=obs, progress=False)
        name = f"lr{lr}-B{b}"
        with writer_class(str(folder / name)) as writer:
            for step, loss in zip(ds.time.values, ds.train_loss.values[0]):
                writer.add_scalar("train/loss", float(loss), int(step))
                writer.add_scalar("learning_rate", lr, int(step))
            writer.add_hparams({"batch_size": b, "optimizer": "sgd"},
                               {"hparam/final_loss": float(loss)})
        truth[name] = (ds.time.values, ds.train_loss.values[0], lr, b)
    runs = read_logs([str(folder)])
    assert sorted(r.name for r in runs) == sorted(truth)
    for r in runs:
        step, loss, lr, b = truth[r.name]
        np.testing.assert_array_equal(r.step, step)
        np.testing.assert_allclose(r.loss, loss, rtol=1e-6)  # stored as float32
        assert (r.lr, r.batch_size) == (lr, b)
        assert os.path.basename(r.source).startswith("events.out.tfevents.")
    # one run directory, one event file: each is a single run
    one = read_logs([str(folder / "lr0.02-B8")])
    assert [r.name for r in one] == ["lr0.02-B8"]
    out = tmp_path / "post.nc"
    assert main(["fit", str(folder), *CHEAP_FIT, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and out.exists()


def test_torch_summary_writer_if_present(tmp_path):
    """PyTorch's writer, where torch is installed (it is not a test dependency)."""
    pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(tmp_path / "torch-run")) as writer:
        for step in range(6):
            writer.add_scalar("Loss/train", 1.0 / (step + 1), step)
    (run,) = read_logs([str(tmp_path)], defaults={"lr": 0.1})
    np.testing.assert_allclose(run.loss, 1.0 / np.arange(1, 7), rtol=1e-6)
    assert run.name == "torch-run" and run.lr == 0.1
