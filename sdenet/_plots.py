"""Figures: ensemble bands against closure predictions (matplotlib, Agg backend)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ._artefact import write_atomic  # noqa: E402
from ._compare import ensemble_moments  # noqa: E402


def save_figure(fig, path) -> str:
    """Save atomically (temporary file in the same folder, then rename)."""
    suffix = os.path.splitext(os.fspath(path))[1] or ".png"
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110,
                                                          bbox_inches="tight"), suffix)
    finally:
        plt.close(fig)


def _band(ax, t, mean, sd, label, color, style="-"):
    ax.plot(t, mean, style, color=color, label=label, lw=1.5)
    ax.fill_between(t, mean - 2 * sd, mean + 2 * sd, color=color, alpha=0.18, lw=0)


def compare_figure(sim, clo, points=3):
    """Loss and outputs over time: ensemble mean ± 2 sd (band) vs closure mean ± 2 sd."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    kind = sim.attrs.get("kind", "ensemble").upper()
    for ax, name in zip(axes[0], ("train_loss", "test_loss")):
        got = ensemble_moments(sim, name)
        if got is None or name + "_mean" not in clo:
            ax.set_visible(False)
            continue
        m, v, n = got
        _band(ax, m.time, m.values, np.sqrt(v.values), f"{kind} ({n} paths)", "C0")
        _band(ax, clo.time, clo[name + "_mean"].values,
              np.sqrt(np.maximum(clo[name + "_var"].values, 0)), "closure", "C3", "--")
        ax.set_title(f"{name.replace('_', ' ')}: mean ± 2 sd")
        ax.set_xlabel("SGD step")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    for ax, name in zip(axes[1], ("train_output", "test_output")):
        got = ensemble_moments(sim, name)
        if got is None or name + "_mean" not in clo:
            ax.set_visible(False)
            continue
        m, v, n = got
        point = f"{name.split('_')[0]}_point"
        chosen = m[point].values[np.linspace(0, m.sizes[point] - 1, points).astype(int)]
        for k, idx in enumerate(np.unique(chosen)):
            mm, vv = m.sel({point: idx}), v.sel({point: idx})
            _band(ax, mm.time, mm.values, np.sqrt(vv.values),
                  f"{kind} point {idx}" if k == 0 else None, f"C{k}")
            cm = clo[name + "_mean"].sel({point: idx})
            cv = clo[name + "_var"].sel({point: idx})
            sd = np.sqrt(np.maximum(cv.values, 0))
            ax.plot(cm.time, cm.values, "--", color=f"C{k}", lw=1.2,
                    label="closure mean ± 2 sd" if k == 0 else None)
            ax.plot(cm.time, cm.values + 2 * sd, ":", color=f"C{k}", lw=1)
            ax.plot(cm.time, cm.values - 2 * sd, ":", color=f"C{k}", lw=1)
        ax.set_title(f"{name.replace('_', ' ')} at {len(np.unique(chosen))} points")
        ax.set_xlabel("SGD step")
        ax.legend(fontsize=8)
    fig.suptitle(f"{kind} ensemble vs moment closure", fontsize=11)
    fig.tight_layout()
    return fig
