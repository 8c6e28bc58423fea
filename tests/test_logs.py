"""Training-log reading and validation."""

import json

import numpy as np
import pytest

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
