"""Closure vs ensemble: errors in Monte Carlo standard errors.

For an ensemble of n paths with sample mean x̄ and variance s² of a quantity whose
closure predicts mean μ and variance v:

    z_mean = (x̄ − μ) / sqrt(v / n)
    z_var  = (s² − v) / sqrt(2 v² / (n − 1))       (Gaussian sampling error of s²)
"""

from __future__ import annotations

import numpy as np
import xarray as xr

QUANTITIES = ("train_loss", "test_loss", "train_output", "test_output")


def ensemble_moments(ds: xr.Dataset, name: str):
    """(mean, variance, n) of ``name`` from a full or a statistics-only ensemble."""
    if name in ds:
        n = ds.sizes["path"]
        return ds[name].mean("path"), ds[name].var("path", ddof=1), n
    if name + "_mean" in ds:
        return ds[name + "_mean"], ds[name + "_var"], int(ds.attrs["n_paths"])
    return None


def compare(sim: xr.Dataset, clo: xr.Dataset) -> list[dict]:
    """Rows of the error table, one per quantity present in both artefacts."""
    if sim.attrs.get("kind") not in ("sde", "sgd"):
        raise ValueError("the first file must be an ensemble from `sdenet simulate` or "
                         f"`sdenet sgd` (kind={sim.attrs.get('kind')!r}).")
    if clo.attrs.get("kind") != "closure":
        raise ValueError("the second file must come from `sdenet closure` "
                         f"(kind={clo.attrs.get('kind')!r}).")
    times = np.intersect1d(sim.time.values, clo.time.values)
    times = times[times > 0]
    if times.size == 0:
        raise ValueError("the two files share no saved time after 0; use the same "
                         "--steps and --save-every.")
    rows = []
    for name in QUANTITIES:
        got = ensemble_moments(sim, name)
        if got is None or name + "_mean" not in clo:
            continue
        mc_mean, mc_var, n = got
        mean = clo[name + "_mean"]
        var = clo[name + "_var"]
        point = next((d for d in mc_mean.dims if d.endswith("_point")), None)
        sel = {"time": times}
        if point:
            common = np.intersect1d(mc_mean[point].values, mean[point].values)
            sel[point] = common
        mc_mean, mc_var = mc_mean.sel(sel), mc_var.sel(sel)
        mean, var = mean.sel(sel), var.sel(sel)
        sd_var = np.maximum(var.values, 1e-300)
        z_mean = (mc_mean.values - mean.values) / np.sqrt(sd_var / n)
        z_var = (mc_var.values - var.values) / np.sqrt(2 * sd_var**2 / max(n - 1, 1))
        rel_var = np.abs(mc_var.values - var.values) / np.maximum(mc_var.values, 1e-300)
        rows.append({
            "quantity": name,
            "n_paths": int(n),
            "max_abs_z_mean": float(np.nanmax(np.abs(z_mean))),
            "rms_z_mean": float(np.sqrt(np.nanmean(z_mean**2))),
            "max_abs_z_var": float(np.nanmax(np.abs(z_var))),
            "median_rel_err_var": float(np.nanmedian(rel_var)),
        })
    if not rows:
        raise ValueError("no quantity is present in both files.")
    return rows


def format_table(rows: list[dict]) -> str:
    head = ("| quantity | paths | max |z| mean | rms z mean | max |z| var | "
            "median rel. err var |\n|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['quantity']} | {r['n_paths']} | {r['max_abs_z_mean']:.2f} | "
            f"{r['rms_z_mean']:.2f} | {r['max_abs_z_var']:.2f} | "
            f"{r['median_rel_err_var']:.3f} |")
    return "\n".join(lines)
