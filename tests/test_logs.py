"""Training-log reading and validation."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdenet._cli import main
from sdenet._logs import LogError, read_logs


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


GOOD = "run,step,loss,lr,batch_size\n" + "".join(
    f"a,{k * 10},{1.0 / (k + 1)},0.1,8\n" for k in range(6)) + "".join(
    f"b,{k * 10},{1.2 / (k + 1)},0.05,8\n" for k in range(6))


def test_reads_csv_and_jsonl(tmp_path):
    runs = read_logs([_write(tmp_path, "log.csv", GOOD)])
    assert [r.name for r in runs] == ["a", "b"]
    assert runs[0].lr == 0.1 and runs[1].batch_size == 8
    rows = [json.dumps({"run": "x", "step": k, "loss": 1.0 / (k + 1), "extra": "y"})
            for k in range(5)]
    runs = read_logs([_write(tmp_path, "log.jsonl", "\n".join(rows))],
                     defaults={"lr": 0.1})
    np.testing.assert_allclose(runs[0].step, np.arange(5))
    assert runs[0].lr == 0.1


@pytest.mark.parametrize("text, needle", [
    ("", "empty"),
    ("run,step,loss\n", "no data rows"),
    ("run,iteration,value\na,1,2\n", "missing column(s) step, loss; the columns present"),
    ("run,step,loss\na,0,1.0\na,10,abc\n", "log.csv:3"),
    ("run,step,loss\na,0,1.0\na,10,nan\n", "NaN"),
    ("run,step,loss\na,0,1.0\na,0,0.9\n", "repeats step 0"),
    ("run,step,loss\na,10,1.0\na,5,0.9\n", "goes back to step 5"),
    ("run,step,loss,lr\na,0,1.0,0.1\na,10,0.9,0.2\n", "conflicting lr"),
    ("run,step,loss\na,0,1.0,7\n", "3 columns"),
    ("run,step,loss\na,0,1\na,1,1\n", "at least 5"),
])
def test_malformed_logs_name_file_and_fault(tmp_path, text, needle):
    path = _write(tmp_path, "log.csv", text)
    with pytest.raises(LogError) as err:
        read_logs([path])
    assert needle in str(err.value) and "log.csv" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(LogError, match="no such file"):
        read_logs([str(tmp_path / "nope.csv")])


MALFORMED = sorted(p for p in (Path(__file__).parent / "data" / "malformed").iterdir()
                   if ".meta." not in p.name)


@pytest.mark.parametrize("path", MALFORMED, ids=[p.name for p in MALFORMED])
def test_malformed_corpus_exits_2_with_one_line(path, tmp_path, capsys):
    out = tmp_path / "post.nc"
    code = main(["fit", str(path), "--lr", "0.1", "--batch-size", "8", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and path.stem in err, err
    assert not out.exists()


def test_framework_formats(tmp_path):
    # PyTorch Lightning CSVLogger: sparse rows (validation metrics on their own rows)
    lightning = "epoch,step,train_loss,val_loss\n" + "".join(
        f"0,{k},{1 / (k + 1)},\n" + (f"0,{k},,{2 / (k + 1)}\n" if k % 3 == 0 else "")
        for k in range(8))
    runs = read_logs([_write(tmp_path, "metrics.csv", lightning)], loss_col="train_loss")
    assert len(runs[0].step) == 8
    # Keras CSVLogger: one row per epoch, no step column
    keras = "epoch,loss,val_loss\n" + "".join(f"{k},{1 / (k + 1)},{1.1 / (k + 1)}\n"
                                              for k in range(6))
    runs = read_logs([_write(tmp_path, "keras.csv", keras)], step_col="epoch")
    np.testing.assert_allclose(runs[0].step, np.arange(6))
    # W&B CSV export: wide, one column per run; sidecar metadata per run
    wandb = "Step,r1 - loss,r2 - loss\n" + "".join(
        f"{k * 10},{1 / (k + 1)},{1.2 / (k + 1)}\n" for k in range(6))
    path = _write(tmp_path, "wandb.csv", wandb)
    _write(tmp_path, "wandb.meta.json", json.dumps(
        {"batch_size": 32, "runs": {"r1": {"lr": 0.1}, "r2": {"lr": 0.2}}}))
    runs = read_logs([path])
    assert [(r.name, r.lr, r.batch_size) for r in runs] == [("r1", 0.1, 32), ("r2", 0.2, 32)]
    # a folder of per-run files
    folder = tmp_path / "runs"
    folder.mkdir()
    for k in range(3):
        (folder / f"seed{k}.jsonl").write_text("\n".join(
            json.dumps({"run": f"s{k}", "step": j, "loss": 1 / (j + 1)}) for j in range(5)))
    assert len(read_logs([str(folder)])) == 3


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list("run,steploss0123456789.-e\n\tnaif ")),
                    max_size=200))
def test_fuzzed_logs_raise_only_log_error(tmp_path, text):
    path = tmp_path / "fuzz.csv"
    path.write_text(text)
    try:
        read_logs([str(path)])
    except LogError:
        pass


def _tensorboard_run(folder, scalars):
    """An event file written by tensorboardX: ``{tag: [(step, value), ...]}``."""
    pytest.importorskip("tensorboard")
    writer_class = pytest.importorskip("tensorboardX").SummaryWriter
    with writer_class(str(folder)) as writer:
        for tag, events in scalars.items():
            for step, value in events:
                writer.add_scalar(tag, value, step)
    (event_file,) = folder.glob("events.out.tfevents.*")
    return str(event_file)


GOOD_LOSS = [(k, 1.0 / (k + 1)) for k in range(6)]


@pytest.mark.parametrize("scalars, needle", [
    ({}, "no scalar summaries"),
    ({"accuracy": GOOD_LOSS, "val_loss": GOOD_LOSS},
     "no loss tag (looked for loss, train/loss"),
    ({"train/loss": GOOD_LOSS[:3] + [(3, float("nan"))]},
     "'train/loss' is nan (NaN/inf) at step 3"),
    ({"loss": GOOD_LOSS[:3] + [(2, 0.2)]}, "repeats step 2 after 2"),
    ({"loss": GOOD_LOSS, "lr": [(0, 0.1), (3, 0.05)]},
     "conflicting lr values 0.05 and 0.1"),
])
def test_malformed_tensorboard_logs_name_file_and_fault(tmp_path, scalars, needle):
    event_file = _tensorboard_run(tmp_path / "run", scalars)
    for path in (event_file, str(tmp_path / "run"), str(tmp_path)):
        with pytest.raises(LogError) as err:
            read_logs([path])
        assert needle in str(err.value) and event_file in str(err.value), str(err.value)
        assert "\n" not in str(err.value)
    if "no loss tag" in needle:
        assert "val_loss, accuracy" not in str(err.value)
        assert "accuracy, val_loss" in str(err.value)
        runs = read_logs([event_file], loss_col="val_loss", defaults={"lr": 0.1})
        assert runs[0].name == "run" and runs[0].lr == 0.1
        out = tmp_path / "post.nc"
        assert main(["fit", str(tmp_path), "--out", str(out)]) == 2


def test_tensorboard_extra_missing_says_what_to_install(tmp_path, monkeypatch):
    event_file = _tensorboard_run(tmp_path / "run", {"loss": GOOD_LOSS})
    for name in ("tensorboard", "tensorboard.backend.event_processing"):
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    with pytest.raises(LogError, match=r'pip install "sdenet\[tensorboard\]"'):
        read_logs([event_file])
