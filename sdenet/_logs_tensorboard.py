"""TensorBoard event files (``events.out.tfevents.*``) as training logs.

Read with the ``tensorboard`` package's own event reader (no TensorFlow), an optional
extra: ``pip install "sdenet[tensorboard]"``. A path is one event file, a run directory
holding event files, or a folder of run directories (searched recursively; each
directory with event files is one run, named by its path below the folder).

Per run: the loss is the first scalar tag found among `LOSS_TAGS` (case-insensitive;
``--loss-col TAG`` names another), its step the event step. Metadata comes, in rising
precedence, from a sidecar ``DIR.meta.json|toml`` beside the folder given, the
``--lr``/``--batch-size`` flags, that sidecar's ``runs`` table (by run name), a sidecar
beside the run directory, the hparams plugin (`HPARAM_KEYS`; written by ``add_hparams``
into the run directory or a subdirectory of it, as tensorboardX and PyTorch do) and
constant scalar tags (`LR_TAGS`, `BATCH_TAGS`). In a folder, directories without the
loss tag (hparams-only) and those named in `SKIPPED_DIRS` (Keras's ``validation/``)
are not runs.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ._logs import LogError, Run, _sidecar

EVENT_MARK = "tfevents"
LOSS_TAGS = ("loss", "train/loss", "train_loss", "loss/train", "training_loss",
             "train_loss_step", "epoch_loss", "train/epoch_loss")
LR_TAGS = ("lr", "learning_rate", "train/lr", "train/learning_rate",
           "epoch_learning_rate")
BATCH_TAGS = ("batch_size", "train/batch_size", "bs")
HPARAM_KEYS = {"lr": ("lr", "learning_rate", "learning-rate"),
               "batch_size": ("batch_size", "batch-size", "bs", "bsize"),
               "sampling": ("sampling",)}
SKIPPED_DIRS = ("validation", "val", "eval")


def is_event_file(path) -> bool:
    """True for a TensorBoard event file name (``events.out.tfevents.<time>.<host>``)."""
    return f"out.{EVENT_MARK}" in os.path.basename(os.fspath(path))


def event_dirs(path) -> list[str]:
    """Directories at or below ``path`` that hold event files, sorted."""
    return sorted({root for root, _, files in os.walk(path)
                   if any(is_event_file(f) for f in files)})


def _reader(path):
    try:
        from tensorboard.backend.event_processing import plugin_event_accumulator
    except ImportError:
        raise LogError(f"{path}: reading TensorBoard event files needs the tensorboard "
                       'package: pip install "sdenet[tensorboard]".') from None
    return plugin_event_accumulator


def _load(path):
    """Scalars ``{tag: [(step, value), ...]}`` and hparams of one file or directory."""
    pea = _reader(path)
    from tensorboard.plugins.hparams import metadata as hp_metadata
    from tensorboard.util import tensor_util

    acc = pea.EventAccumulator(path, size_guidance={pea.TENSORS: 0},
                               purge_orphaned_data=False).Reload()
    scalars = {}
    for tag, meta in acc.AllSummaryMetadata().items():
        if meta.plugin_data.plugin_name == "scalars":
            scalars[tag] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                            for e in acc.Tensors(tag)]
    hparams = {}
    if hp_metadata.PLUGIN_NAME in acc.ActivePlugins():
        content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)
        if hp_metadata.SESSION_START_INFO_TAG in content:
            info = hp_metadata.parse_session_start_info_plugin_data(
                content[hp_metadata.SESSION_START_INFO_TAG])
            for key, value in info.hparams.items():
                kind = value.WhichOneof("kind")
                hparams[key.lower()] = getattr(value, kind) if kind else None
    return scalars, hparams


def _find(tags, wanted):
    lower = {t.lower(): t for t in tags}
    return next((lower[w] for w in wanted if w in lower), None)


def _exact(x):
    """A float32-stored setting back to its decimal (0.10000000149 -> 0.1)."""
    return float(f"{x:.7g}")


def _metadata(source, name, scalars, hparams):
    meta = {}
    for key, names in HPARAM_KEYS.items():
        value = next((hparams[k] for k in names if hparams.get(k) is not None), None)
        if value is None:
            continue
        if key == "sampling":
            meta[key] = str(value)
            continue
        try:
            meta[key] = _exact(float(value))
        except ValueError:
            raise LogError(f"{source}: run {name!r} has hparam {key} = {value!r}, not a "
                           "number.") from None
    for key, names in (("lr", LR_TAGS), ("batch_size", BATCH_TAGS)):
        tag = _find(scalars, names)
        if tag is None:
            continue
        values = sorted({_exact(v) for _, v in scalars[tag]})
        if len(values) > 1:
            raise LogError(f"{source}: run {name!r} has conflicting {key} values "
                           f"{values[0]:g} and {values[-1]:g} in tag {tag!r}; the scaling "
                           "fit needs runs at a constant setting.")
        meta[key] = values[0]
    return meta


def _series(source, name, tag, events):
    steps, losses = [], []
    for step, value in events:
        if not math.isfinite(value):
            raise LogError(f"{source}: tag {tag!r} is {value} (NaN/inf) at step {step}; "
                           "stop the log before the run diverged.")
        if steps and step <= steps[-1]:
            what = "repeats" if step == steps[-1] else "goes back to"
            raise LogError(f"{source}: run {name!r} {what} step {step} after {steps[-1]}; "
                           "steps must increase within a run (a restarted run? log it to "
                           "a fresh directory).")
        steps.append(step)
        losses.append(value)
    return np.asarray(steps, float), np.asarray(losses)


def read_tensorboard(path, *, loss_col="loss", defaults: dict | None = None) -> list[Run]:
    """Read one event file, a run directory or a folder of runs (see module docstring).

    Raises:
        LogError: tensorboard not installed, no event files, no loss tag (the message
            lists the tags present), no scalars, NaN/inf, repeated or decreasing steps,
            or a changing lr/batch-size tag; the message names the file or directory.
    """
    path = os.fspath(path)
    _reader(path)
    single = not os.path.isdir(path)
    top = os.path.dirname(os.path.abspath(path)) if single else path
    dirs = [top] if single else event_dirs(path)
    if not dirs:
        raise LogError(f"{path}: no TensorBoard event files (events.out.tfevents.*).")
    loaded = {}
    for d in dirs:
        files = [] if single else sorted(f for f in os.listdir(d) if is_event_file(f))
        source = path if single else os.path.join(d, files[0]) if len(files) == 1 else d
        loaded[d] = (source, *_load(path if single else d))
    sidecar = _sidecar(top)
    shared = sidecar | dict(defaults or {})
    wanted = LOSS_TAGS if loss_col == "loss" else (loss_col,)
    runs = []
    for d, (source, scalars, _) in loaded.items():
        tag = loss_col if loss_col in scalars else _find(scalars, wanted)
        if tag is None or len(loaded) > 1 and os.path.basename(d).lower() in SKIPPED_DIRS:
            continue  # hparams-only or evaluation directories beside the runs
        name = os.path.relpath(d, top).replace(os.sep, "/")
        name = os.path.basename(os.path.abspath(d)) if name == "." else name
        hparams = {}
        for other, (_, _, hp) in loaded.items():  # its own and its subdirectories'
            if other == d or other.startswith(d + os.sep):
                hparams = hp | hparams
        step, loss = _series(source, name, tag, scalars[tag])
        meta = ({k: v for k, v in shared.items() if k != "runs"}
                | sidecar.get("runs", {}).get(name, {})
                | (_sidecar(d) if d != top else {})
                | _metadata(source, name, scalars, hparams))
        runs.append(Run(name, step, loss, None, meta, source))
    if not runs:
        where = loaded[dirs[0]][0] if len(dirs) == 1 else path
        tags = sorted({t for _, scalars, _ in loaded.values() for t in scalars})
        if not tags:
            raise LogError(f"{where}: no scalar summaries (an empty or unreadable event "
                           "file).")
        raise LogError(f"{where}: no loss tag (looked for {', '.join(wanted)}); the scalar "
                       f"tags present are {', '.join(tags)} (name one with --loss-col).")
    return runs
