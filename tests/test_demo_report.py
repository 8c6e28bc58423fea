"""`sdenet demo --quick` end to end, and `sdenet report` on its artefacts."""

import os
import re
import shutil
import subprocess

import pytest

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
    _check_in_browser(index, len(figures))


def _check_in_browser(index, n_figures):
    """Render the page in headless Chromium; every <img> must have loaded."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium not installed (.ci/run installs Debian's chromium)")
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={index.parent / '.chromium'}",
         "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom",
         index.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert f'data-figures="{n_figures}/{n_figures}"' in dom, dom[-500:]


def test_report_rejects_non_artefacts(tmp_path, capsys):
    bogus = tmp_path / "x.nc"
    bogus.write_text("not netcdf")
    assert main(["report", str(bogus), "--out", str(tmp_path / "r")]) == 2
    assert "x.nc" in capsys.readouterr().err
