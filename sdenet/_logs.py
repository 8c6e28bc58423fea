"""Training logs: the long format ``run,step,loss[,lr,batch_size,test_loss,sampling]``.

Readers accept CSV/TSV (header row) and JSONL (one object per line), netCDF
ensembles written by ``sdenet sgd`` / ``sdenet simulate`` (every path is a run), and
TensorBoard event files (`sdenet._logs_tensorboard`, the ``tensorboard`` extra).
Every fault raises `LogError` naming the file (and line) and what to do.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

REQUIRED = ("run", "step", "loss")
META = ("lr", "batch_size", "sampling")
MIN_POINTS = 5
LOG_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".ndjson", ".json", ".nc")


class LogError(ValueError):
    """A malformed training log (the message names the file, line and fault)."""


@dataclass
class Run:
    """One training run: steps, logged loss and its metadata."""

    name: str
    step: np.ndarray
    loss: np.ndarray
    test_loss: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    source: str = ""

    @property
    def lr(self) -> float | None:
        return self.meta.get("lr")

    @property
    def batch_size(self) -> float | None:
        return self.meta.get("batch_size")


def _number(value, path, line, column):
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise LogError(f"{path}:{line}: column {column!r} is not a number: {value!r}; "
                       "fix or remove the row.") from None
    if not math.isfinite(x):
        raise LogError(f"{path}:{line}: column {column!r} is {value!r} (NaN/inf); remove "
                       "the row or stop the log before the run diverged.")
    return x


def _rows_csv(path):
    with open(path, newline="") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        delimiter = "\t" if sample.count("\t") > sample.count(",") else ","
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise LogError(f"{path}: the file is empty; expected a header row "
                           f"with columns {', '.join(REQUIRED)}.")
        header = [h.strip() for h in header]
        for line, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise LogError(f"{path}:{line}: {len(row)} cells but the header has "
                               f"{len(header)} columns.")
            yield line, header, dict(zip(header, (c.strip() for c in row)))


def _rows_jsonl(path):
    with open(path) as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                raise LogError(f"{path}:{line}: not valid JSON ({err.msg}).") from None
            if not isinstance(obj, dict):
                raise LogError(f"{path}:{line}: expected a JSON object per line.")
            yield line, list(obj), obj


def read_log(path, *, step_col="step", loss_col="loss", run_col="run",
             defaults: dict | None = None) -> list[Run]:
    """Read one log file into runs (see module docstring for the format).

    ``defaults`` fills metadata (lr, batch_size, sampling) missing from the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise LogError(f"{path}: no such file.")
    if path.endswith(".nc"):
        return _read_netcdf(path, defaults)
    from ._logs_tensorboard import is_event_file, read_tensorboard

    if os.path.isdir(path) or is_event_file(path):
        return read_tensorboard(path, loss_col=loss_col, defaults=defaults)
    rows = _rows_jsonl(path) if path.endswith((".jsonl", ".json", ".ndjson")) \
        else _rows_csv(path)
    runs: dict[str, dict] = {}
    seen_header = None
    for line, header, row in rows:
        if seen_header is None:
            seen_header = header
            wide = [c for c in header if c.endswith(f" - {loss_col}")]
            if loss_col not in header and wide:
                return _read_wide(path, step_col, loss_col, wide, defaults)
            missing = [c for c in (step_col, loss_col) if c not in header]
            if missing:
                raise LogError(
                    f"{path}: missing column(s) {', '.join(missing)}; the columns present "
                    f"are {', '.join(header)} (map them with --step-col/--loss-col/"
                    "--run-col).")
        if row.get(loss_col) in ("", None):
            continue  # sparse logs (Lightning): this row logs other metrics
        name = str(row.get(run_col, "0")) if run_col in row else "0"
        step = _number(row.get(step_col), path, line, step_col)
        loss = _number(row.get(loss_col), path, line, loss_col)
        run = runs.setdefault(name, {"step": [], "loss": [], "test": [], "meta": {},
                                     "line": line})
        if run["step"] and step <= run["step"][-1]:
            what = "repeats" if step == run["step"][-1] else "goes back to"
            raise LogError(f"{path}:{line}: run {name!r} {what} step {step:g} after "
                           f"{run['step'][-1]:g}; steps must increase within a run.")
        run["step"].append(step)
        run["loss"].append(loss)
        if "test_loss" in row and row["test_loss"] not in ("", None):
            run["test"].append(_number(row["test_loss"], path, line, "test_loss"))
        for key in META:
            if key in row and row[key] not in ("", None):
                value = row[key] if key == "sampling" else _number(row[key], path, line,
                                                                   key)
                old = run["meta"].setdefault(key, value)
                if old != value:
                    raise LogError(f"{path}:{line}: run {name!r} has conflicting {key} "
                                   f"values {old} and {value}.")
    if seen_header is None or not runs:
        raise LogError(f"{path}: the log holds no data rows.")
    defaults = _sidecar(path) | dict(defaults or {})
    out = []
    for name, run in runs.items():
        meta = {k: v for k, v in defaults.items() if k != "runs"} | \
            defaults.get("runs", {}).get(name, {}) | run["meta"]
        test = np.asarray(run["test"]) if len(run["test"]) == len(run["step"]) else None
        out.append(Run(name, np.asarray(run["step"]), np.asarray(run["loss"]), test, meta,
                       path))
    return out


def _sidecar(path) -> dict:
    """Metadata beside a log: FILE.meta.json or FILE.meta.toml (DIR.meta.* for a
    directory), e.g. ``{"lr": 0.1, "batch_size": 32, "runs": {"seed1": {"lr": 0.2}}}``."""
    stem = path.rstrip(os.sep) if os.path.isdir(path) else os.path.splitext(path)[0]
    for ext in (".meta.json", ".meta.toml"):
        side = stem + ext
        if not os.path.exists(side):
            continue
        try:
            if ext.endswith("json"):
                with open(side) as fh:
                    meta = json.load(fh)
            else:
                import tomllib

                with open(side, "rb") as fh:
                    meta = tomllib.load(fh)
        except (ValueError, OSError) as err:
            raise LogError(f"{side}: unreadable metadata ({err}).") from None
        if not isinstance(meta, dict):
            raise LogError(f"{side}: metadata must be a table/object.")
        return meta
    return {}


def _read_wide(path, step_col, loss_col, columns, defaults):
    """W&B CSV export: one ``Step`` column and a ``<run> - <metric>`` column per run."""
    steps = {c: [] for c in columns}
    losses = {c: [] for c in columns}
    for line, header, row in _rows_csv(path):
        scol = step_col if step_col in row else ("Step" if "Step" in row else None)
        if scol is None:
            raise LogError(f"{path}: a W&B export needs a {step_col!r} or 'Step' column; "
                           f"the columns present are {', '.join(header)}.")
        for c in columns:
            if row.get(c, "") == "":
                continue
            step = _number(row[scol], path, line, scol)
            if steps[c] and step <= steps[c][-1]:
                raise LogError(f"{path}:{line}: run {c!r} repeats or goes back to step "
                               f"{step:g}; steps must increase within a run.")
            steps[c].append(step)
            losses[c].append(_number(row[c], path, line, c))
    meta = _sidecar(path) | dict(defaults or {})
    return [Run(c.removesuffix(f" - {loss_col}"), np.asarray(steps[c]),
                np.asarray(losses[c]), None,
                {k: v for k, v in meta.items() if k != "runs"} | meta.get("runs", {}).get(
                    c.removesuffix(f" - {loss_col}"), {}), path)
            for c in columns if steps[c]]


def _read_netcdf(path, defaults):
    from ._artefact import config_of, read_netcdf

    ds = read_netcdf(path)
    if "train_loss" not in ds or "path" not in ds.dims:
        raise LogError(f"{path}: not an ensemble with per-path train_loss (write it "
                       "without --stats-only).")
    cfg = config_of(ds)
    meta = dict(defaults or {})
    lr = cfg.get("lr", {})
    if lr.get("schedule") == "constant":
        meta["lr"] = float(lr["lr"])
    if cfg.get("kind") == "sgd":
        meta["batch_size"] = float(cfg["batch_size"])
        meta["sampling"] = cfg["sampling"]
    elif cfg.get("noise", {}).get("model") == "minibatch":
        meta["batch_size"] = float(cfg["noise"]["batch_size"])
        meta["sampling"] = cfg["noise"]["sampling"]
    stem = os.path.splitext(os.path.basename(path))[0]
    steps = ds.time.values
    runs = []
    for k in ds.path.values:
        test = ds.test_loss.sel(path=k).values if "test_loss" in ds else None
        runs.append(Run(f"{stem}/{int(k)}", steps, ds.train_loss.sel(path=k).values, test,
                        dict(meta), path))
    return runs


def read_logs(paths, *, min_points=MIN_POINTS, **options) -> list[Run]:
    """Read several log files; run names are prefixed by the file when needed."""
    if not paths:
        raise LogError("no log files given.")
    expanded = []
    from ._logs_tensorboard import event_dirs

    for path in map(os.fspath, paths):
        if os.path.isdir(path) and event_dirs(path):
            expanded.append(path)  # TensorBoard runs: read as one folder
        elif os.path.isdir(path):
            found = sorted(f for f in glob.glob(os.path.join(path, "**", "*"),
                                                recursive=True)
                           if f.endswith(LOG_SUFFIXES) and ".meta." not in f)
            if not found:
                raise LogError(f"{path}: the folder holds no log files "
                               f"({', '.join(LOG_SUFFIXES)}, events.out.tfevents.*).")
            expanded += found
        elif any(ch in path for ch in "*?[") and not os.path.exists(path):
            found = sorted(glob.glob(path))
            if not found:
                raise LogError(f"{path}: the pattern matches no file.")
            expanded += found
        else:
            expanded.append(path)
    paths = expanded
    runs = []
    for path in paths:
        got = read_log(path, **options)
        if len(paths) > 1:
            for r in got:
                if not r.name.startswith(os.path.splitext(os.path.basename(path))[0]):
                    r.name = f"{os.path.basename(path)}:{r.name}"
        runs.extend(got)
    for r in runs:
        if len(r.step) < min_points:
            raise LogError(f"{r.source}: run {r.name!r} has {len(r.step)} points; at least "
                           f"{min_points} are needed.")
    return runs
