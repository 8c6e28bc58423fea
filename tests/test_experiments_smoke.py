"""Smoke tests of the experiment scripts in experiments/: they run end to end and write
their JSON and PNG (tiny sizes; the numbers are checked only for shape and sanity)."""

import importlib.util
import json
import math
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_experiment_{name}",
                                                  EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_outputs(tmp_path, name, capsys):
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert "| η |" in capsys.readouterr().out
    return data


def test_sampling_quick(tmp_path, capsys):
    _load("sampling").main(["--quick", "--out", str(tmp_path)])
    data = _check_outputs(tmp_path, "sampling", capsys)
    assert len(data["rows"]) == 4 and 0.3 < data["lambda_min"] < 1.0
    for row in data["rows"]:
        assert row["sgd"] > 0 and row["sde"] > 0 and math.isfinite(row["sde_over_sgd"])
    assert {"sgd_iid", "sgd_reshuffle", "sde_iid", "sde_reshuffle"} <= set(data["slopes"])


def test_weak_order_smoke(tmp_path, capsys):
    # --quick takes about a minute (many small jit compilations); --smoke is a tiny
    # version of it used only here
    _load("weak_order").main(["--smoke", "--out", str(tmp_path)])
    data = _check_outputs(tmp_path, "weak_order", capsys)
    assert len(data["rows"]) == 2
    for row in data["rows"]:
        for variant in ("first", "sme"):
            v = row[variant]
            # sdenet's noise-free runs reproduce the exact mean recursion
            assert v["mean_check"] < 1e-10
            assert all(math.isfinite(v[k]) and v[k] >= 0 for k in
                       ("mc_plain", "mc_cv", "exact_dt", "exact_dt0", "deterministic"))
