"""`sdenet report`: one HTML page of figures for any set of sdenet artefacts.

Ensembles (`simulate`/`sgd`), closures and posteriors (`fit`) are recognised from
their attrs; ensembles are drawn against every closure, posteriors get ArviZ trace and
forest plots, posterior-predictive bands of every run's loss and a diagnostics table.
"""

from __future__ import annotations

import html
import json
import os
import warnings

import numpy as np

from ._artefact import read_netcdf
from ._plots import compare_figure, plt, save_figure


def load_artefact(path):
    """('ensemble' | 'closure' | 'posterior', object) for an sdenet netCDF file."""
    import netCDF4

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file.")
    try:
        with netCDF4.Dataset(path) as nc:
            groups = set(nc.groups)
    except OSError as err:
        raise ValueError(f"{path}: not a netCDF file ({err}).") from None
    if "posterior" in groups:
        import arviz as az

        return "posterior", az.from_netcdf(path)
    ds = read_netcdf(path)
    kind = ds.attrs.get("kind")
    if kind in ("sde", "sgd"):
        return "ensemble", ds
    if kind == "closure":
        return "closure", ds
    raise ValueError(f"{path}: not an sdenet artefact (no kind attribute).")


def _loss_bands(idata, max_runs=12):
    """Observed loss of every run with the 5–95% posterior-predictive band."""
    obs = idata.observed_data["loss"]
    pp = idata.posterior_predictive["loss"]
    steps = idata.constant_data["step"]
    runs = list(obs.run.values)[:max_runs]
    cols = 3
    rows = int(np.ceil(len(runs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, run in zip(axes.ravel(), runs):
        t = steps.sel(run=run).values
        y = obs.sel(run=run).values
        draws = pp.sel(run=run).values.reshape(-1, len(t))
        lo, mid, hi = np.nanpercentile(draws, [5, 50, 95], axis=0)
        ax.fill_between(t, lo, hi, color="C1", alpha=0.3, lw=0, label="90% predictive")
        ax.plot(t, mid, color="C1", lw=1)
        ax.plot(t, y, ".", ms=2, color="C0", label="log")
        ax.set_yscale("log")
        lr = float(idata.constant_data["lr"].sel(run=run))
        b = float(idata.constant_data["batch_size"].sel(run=run))
        ax.set_title(f"{run} (η={lr:g}, B={b:g})", fontsize=8)
    for ax in axes.ravel()[len(runs):]:
        ax.set_visible(False)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _posterior_figures(idata, stem, out_dir):
    import arviz as az

    names = [v for v in ("L_star", "alpha", "beta", "F0", "rate", "sigma", "obs_sd")
             if v in idata.posterior]
    figs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = az.plot_trace(idata, var_names=names, compact=True)
        figs.append(("trace", np.ravel(axes)[0].figure))
        axes = az.plot_forest(idata, var_names=[v for v in names if v in ("alpha", "beta")]
                              or names[:2], combined=True, hdi_prob=0.9)
        fig = np.ravel(axes)[0].figure
        for ax in np.ravel(axes):
            ax.axvline(1.0, color="k", ls=":", lw=1)
        figs.append(("forest", fig))
        if "posterior_predictive" in idata.groups() and \
                "loss" in idata.posterior_predictive:
            figs.append(("loss-bands", _loss_bands(idata)))
        summary = az.summary(idata, var_names=names, hdi_prob=0.9)
    out = []
    for name, fig in figs:
        fname = f"{stem}-{name}.png"
        save_figure(fig, os.path.join(out_dir, fname))
        out.append(fname)
    return out, summary


def _write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def report(paths, out_dir, title="sdenet report") -> str:
    """Write ``out_dir/index.html`` (and its PNG figures) for the given artefacts."""
    if not paths:
        raise ValueError("give at least one artefact (.nc) to report on.")
    os.makedirs(out_dir, exist_ok=True)
    loaded = [(p, *load_artefact(p)) for p in paths]
    ensembles = [(p, d) for p, k, d in loaded if k == "ensemble"]
    closures = [(p, d) for p, k, d in loaded if k == "closure"]
    posteriors = [(p, d) for p, k, d in loaded if k == "posterior"]
    sections = []
    from ._compare import compare, format_table

    for ep, ens in ensembles:
        for cp, clo in closures:
            stem = f"{_stem(ep)}-vs-{_stem(cp)}"
            fname = f"{stem}.png"
            save_figure(compare_figure(ens, clo), os.path.join(out_dir, fname))
            rows = compare(ens, clo)
            sections.append(_section(
                f"{os.path.basename(ep)} vs {os.path.basename(cp)}", [fname],
                "<p>Errors in Monte Carlo standard errors:</p>" + _md_table(
                    format_table(rows))))
    if ensembles and not closures:
        fname = "ensembles.png"
        save_figure(_ensembles_figure(ensembles), os.path.join(out_dir, fname))
        sections.append(_section("ensembles", [fname], ""))
    for pp, idata in posteriors:
        figs, summary = _posterior_figures(idata, _stem(pp), out_dir)
        cfg = json.loads(idata.posterior.attrs.get("sdenet_config", "{}"))
        diag = cfg.get("diagnostics", {})
        text = "<h3>Diagnostics</h3>" + _dict_table(diag)
        if cfg.get("diagnostic_warnings"):
            text += "<p class=warn>" + "<br>".join(
                html.escape(w) for w in cfg["diagnostic_warnings"]) + "</p>"
        text += "<h3>Posterior summary (90% HDI)</h3>" + summary.to_html(
            float_format=lambda x: f"{x:.4g}")
        sections.append(_section(f"posterior {os.path.basename(pp)}", figs, text))
    page = _PAGE.format(title=html.escape(title), body="\n".join(sections))
    index = os.path.join(out_dir, "index.html")
    _write_atomic(index, page)
    return index


def _ensembles_figure(ensembles):
    from ._compare import ensemble_moments

    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (path, ds) in enumerate(ensembles):
        m, v, n = ensemble_moments(ds, "train_loss")
        ax.plot(m.time, m.values, color=f"C{k}", label=f"{os.path.basename(path)} ({n})")
        ax.fill_between(m.time, m - 2 * np.sqrt(v), m + 2 * np.sqrt(v), color=f"C{k}",
                        alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("train loss: mean ± 2 sd")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _section(title, figures, text):
    imgs = "".join(f'<figure><img src="{html.escape(f)}" alt="{html.escape(f)}"></figure>'
                   for f in figures)
    return f"<section><h2>{html.escape(title)}</h2>{text}{imgs}</section>"


def _dict_table(d):
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in d.items())
    return f"<table>{rows}</table>"


def _md_table(md):
    lines = [ln for ln in md.splitlines() if not set(ln) <= set("|-")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in cells[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: .5em 0; font-size: 90%; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
.warn {{ color: #a40; }}
</style></head>
<body><h1>{title}</h1>
{body}
<script>
// records how many figures loaded (read by the headless-browser test)
window.addEventListener("load", function () {{
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }});
  document.body.setAttribute("data-figures", ok.length + "/" + imgs.length);
}});
</script>
</body></html>
"""
