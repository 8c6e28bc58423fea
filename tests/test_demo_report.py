"""`sdenet demo --quick` end to end, and `sdenet report` on its artefacts."""

import os
import re

from sdenet._cli import main


def test_demo_quick_writes_report_with_all_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    index = out / "index.html"
    page = index.read_text()
    figures = re.findall(r'<img src="([^"]+)"', page)
    assert len(figures) >= 7
    for fig in figures:
        path = out / fig
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("sgd.nc", "sde.nc", "closure-order1.nc", "closure-order2.nc",
                 "posterior.nc", "sgd-logs.csv"):
        assert (out / name).exists()
    # the report command re-renders any subset
    again = tmp_path / "again"
    assert main(["report", str(out / "sde.nc"), str(out / "closure-order1.nc"),
                 "--out", str(again)]) == 0
    assert len(re.findall("<img", (again / "index.html").read_text())) == 1
    assert not [f for f in os.listdir(again) if f.endswith(".tmp")]


def test_report_rejects_non_artefacts(tmp_path, capsys):
    bogus = tmp_path / "x.nc"
    bogus.write_text("not netcdf")
    assert main(["report", str(bogus), "--out", str(tmp_path / "r")]) == 2
    assert "x.nc" in capsys.readouterr().err
