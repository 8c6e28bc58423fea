"""Artefacts: xarray Datasets with their configuration, written atomically to netCDF."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from importlib import metadata

import numpy as np
import xarray as xr

from ._observables import OBSERVABLE_DIMS, OBSERVABLE_DOCS

_PACKAGES = ("sdenet", "jax", "jaxlib", "diffrax", "equinox", "lineax", "optax",
             "numpyro", "arviz", "xarray", "numpy")


def versions() -> dict[str, str]:
    """Installed versions of sdenet and the libraries it stands on."""
    return dict(_versions())


@functools.cache
def _versions() -> tuple:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return tuple(out.items())


def ensemble_dataset(out, problem, observables, save_every, paths, stats_only,
                     config, seed) -> xr.Dataset:
    """Turn the driver's arrays (time-major) into the sdenet Dataset layout."""
    n_time = next(iter(out.values())).shape[0]
    time = np.arange(n_time) * float(save_every)
    tr, te = observables.indices(problem)
    coords = {"time": ("time", time, {"units": "SGD steps"})}
    if "train_output" in observables.names(problem):
        coords["train_point"] = ("train_point", tr)
    if "test_output" in observables.names(problem):
        coords["test_point"] = ("test_point", te)
    data_vars = {}
    for name, value in out.items():
        base = name.removesuffix("_mean").removesuffix("_var")
        extra = OBSERVABLE_DIMS[base]
        attrs = {"description": OBSERVABLE_DOCS[base]}
        if stats_only:
            dims = ("time",) + extra
            attrs["statistic"] = ("ensemble mean" if name.endswith("_mean")
                                  else "ensemble variance (ddof=1)")
        else:
            dims = ("time", "path") + extra
        data_vars[name] = xr.Variable(dims, np.asarray(value), attrs)
    if "weights" in observables.names(problem):
        coords["weight"] = ("weight", np.arange(problem.n_params))
    if not stats_only:
        coords["path"] = ("path", np.arange(paths))
    ds = xr.Dataset(data_vars, coords=coords)
    if not stats_only:
        ds = ds.transpose("path", "time", ...)
    if "train_point" in ds.coords:
        ds["train_target"] = ("train_point", np.asarray(problem.y_train)[tr])
    if "test_point" in ds.coords:
        ds["test_target"] = ("test_point", np.asarray(problem.y_test)[te])
    return with_provenance(ds, config, seed, n_paths=paths)


def with_provenance(ds: xr.Dataset, config: dict, seed, **extra) -> xr.Dataset:
    """Record the full configuration, seed and package versions in the attrs."""
    ds.attrs.update(
        kind=config.get("kind", "unknown"),
        config=json.dumps(config, sort_keys=True, default=_jsonable),
        seed=-1 if seed is None else int(seed),
        versions=json.dumps(versions(), sort_keys=True),
        **{k: v for k, v in extra.items()},
    )
    return ds


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return repr(x)


def config_of(ds: xr.Dataset) -> dict:
    """The configuration recorded in an artefact."""
    return json.loads(ds.attrs.get("config", "{}"))


def write_atomic(path: str | os.PathLike, write, suffix: str = ".tmp") -> str:
    """Call ``write(tmp)`` on a temporary file in the folder of ``path``, then
    ``os.replace`` it onto ``path``: an existing file is only ever replaced by a
    complete new one, and no temporary is left behind on failure."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"--out {path}: folder {folder} does not exist; create it first.")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".sdenet-", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike) -> str:
    """Write ``ds`` to ``path`` atomically (see `write_atomic`)."""
    return write_atomic(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"),
                        ".nc.tmp")


def read_netcdf(path: str | os.PathLike) -> xr.Dataset:
    """Load an sdenet artefact fully into memory (the file is closed afterwards)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file.")
    try:
        with xr.open_dataset(path) as ds:
            return ds.load()
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable netCDF file ({err}).") from err
