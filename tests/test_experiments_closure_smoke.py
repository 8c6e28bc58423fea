"""Smoke test of experiments/second_order.py (the closure regime map) at a tiny size:
it runs end to end and writes its JSON and PNG; numbers are checked only for sanity."""

import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "second_order.py"


def test_second_order_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("_experiment_second_order", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--smoke", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "second_order.json").read_text())
    assert (tmp_path / "second_order.png").stat().st_size > 1000
    assert "| W | start | σ |" in capsys.readouterr().out
    (group,) = data["groups"]
    assert group["start"] == "min" and len(group["regimes"]) == 2
    for row in group["regimes"]:
        for method in ("first", "second"):
            m = row["methods"][method]
            assert all(math.isfinite(x) and x >= 0 for x in m["mean_err_se"])
            assert all(math.isfinite(x) for x in m["var_rel_err"])
        # near a minimum the closure's shift has the Monte Carlo direction
        assert row["methods"]["second"]["shift_corr"][-1] > 0.5
    assert math.isfinite(group["mc_shift_slope"])
