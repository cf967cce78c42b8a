"""General matplotlib charts: loss curves, labelled heatmaps of any matrix, curves, bars,
next-token distributions and per-token log-probabilities, and the intervention figures of
:mod:`jaxformer.interp` (activation patching, logit attribution, head detectors).

Attention maps are drawn by :mod:`jaxformer.viz.attention_figures`, positional encodings, the
residual stream and the logit lens by :mod:`jaxformer.viz.representation_figures`; what all
figures share (the figure class that a notebook shows inline, ``save``) is in
:mod:`jaxformer.viz.figure`. Every function returns the figure and, given ``path``, also
writes it as a PNG of exactly ``figsize * dpi`` pixels (constrained layout, no tight-bbox
cropping). Labels are never cut: names on bars wrap onto more lines and the figure makes room.
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Dict, Optional, Sequence

import numpy as np

from jaxformer.errors import DataError
from jaxformer.runfolder import read_metrics
from jaxformer.viz.figure import CMAP, annotate_cells, figure_title, new_figure, save, span, with_fonts
from jaxformer.viz.text import displayable, token_axis, wrap_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["loss_curves", "sampling_comparison", "matrix_heatmap", "token_logprobs", "line_plot", "bar_chart",
           "patching_heatmap", "logit_attribution", "head_detector_scores"]


@with_fonts
def loss_curves(metrics, *, title: str = "training and validation loss", path=None) -> Figure:
    """Train / val loss against step from a list of metric dicts, a ``metrics.jsonl`` path or
    a run folder (read by :func:`jaxformer.runfolder.read_metrics`; entries without
    ``val_loss`` are train-only logs). Raises :class:`DataError` for a path with no metrics."""
    if isinstance(metrics, (str, os.PathLike)):
        source, metrics = metrics, read_metrics(metrics)
        if not metrics:
            raise DataError(f"no metrics records at {os.fspath(source)!r} (expected a run folder "
                            f"or a metrics.jsonl file)")
    fig = new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    for key, style in (("train_loss", dict(lw=1.2)), ("val_loss", dict(lw=2.0, marker="o", ms=4))):
        pts = [(m["step"], m[key]) for m in metrics if m.get(key) is not None]
        if pts:
            s, v = zip(*pts)
            ax.plot(s, v, label=key.replace("_", " "), **style)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats / token)")
    figure_title(fig, title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


@with_fonts
def sampling_comparison(dists: Dict[str, np.ndarray], decode, *, top: int = 12,
                        title: str = "next-token distribution under each sampling setting",
                        path=None) -> Figure:
    """Bar charts of next-token distributions, one panel per setting (``{"T=0.7": probs_V}``),
    over the ``top`` tokens most likely across the settings (same order in every panel).
    Each panel's title counts the tokens with non-zero probability."""
    names = list(dists)
    base = np.sum([np.asarray(dists[k], np.float64) for k in names], axis=0)   # robust to one-hot
    order = np.argsort(-base, kind="stable")[:top]
    ticks = [str(decode(int(i))) for i in order]
    cols = min(len(names), 3)
    rows = math.ceil(len(names) / cols)
    fig = new_figure(max(4.2, 0.25 * len(order) + 1.2) * cols, 3.3 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for k in range(rows * cols):
        ax = axes[k // cols, k % cols]
        if k >= len(names):
            ax.axis("off")
            continue
        p = np.asarray(dists[names[k]])
        ax.bar(range(len(order)), p[order], color="tab:blue")
        token_axis(ax, ticks, "x", fontsize=9, rotation=90 if max(map(len, ticks), default=0) > 2 else 0)
        alive = int((p > 0).sum())
        ax.set_title(f"{names[k]}  ({alive} token{'s' if alive != 1 else ''} possible)", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
        if k % cols == 0:
            ax.set_ylabel("probability (0-1)")
    fig.supxlabel("candidate next token", fontsize=10)
    figure_title(fig, title)
    return save(fig, path)


@with_fonts
def matrix_heatmap(m, *, xlabels=None, ylabels=None, title: str = "", xlabel: str = "", ylabel: str = "",
                   cbar_label: str = "value", cmap: str = CMAP, vmin=None, vmax=None,
                   annotate: Optional[bool] = None, fmt: str = "{:.2f}", path=None) -> Figure:
    """Any matrix ``[R, C]`` as a labelled heatmap with a colour bar labelled ``cbar_label``
    (say what the one quantity is and its unit), the values written in the cells when it is
    small (at most 12 x 12) or ``annotate=True``. Row and column labels go through
    :func:`token_axis`."""
    m = np.asarray(m, np.float64)
    R, C = m.shape
    fig = new_figure(span(C, 0.3, 3.4, 5.0, 13.0), span(R, 0.22, 2.4, 3.4, 11.0))
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    if xlabels is not None:
        token_axis(ax, xlabels, "x")
    if ylabels is not None:
        token_axis(ax, ylabels, "y")
    if annotate or (annotate is None and R <= 12 and C <= 12):
        annotate_cells(ax, m, im, fmt)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    figure_title(fig, title, 11)
    fig.colorbar(im, ax=ax, label=cbar_label)
    return save(fig, path)


@with_fonts
def token_logprobs(logprobs, labels: Sequence[str], *, second=None, title: str = "log-probability of each token",
                   xlabel: str = "token", path=None) -> Figure:
    """The log-probability (nats) of each token ``[T]`` as bars, one per token labelled by
    :func:`token_axis`; with ``second`` (``[T]``, e.g. the runner-up's log-probability) drawn
    as dots over them. The figure widens with the tokens up to 16 inches."""
    lp = np.asarray(logprobs, np.float64)
    T = lp.shape[0]
    fig = new_figure(span(T, 0.16, 2.5, 6.0, 16.0), 4.4)
    ax = fig.add_subplot()
    ax.bar(range(T), lp, color="tab:blue", width=0.8, label="log p(token)")
    if second is not None:
        ax.plot(range(T), np.asarray(second, np.float64)[:T], "o", ms=3.5, color="tab:orange",
                label="log p(runner-up)")
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_xlim(-0.6, T - 0.4)
    token_axis(ax, labels, "x", n=T)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("log-probability (nats)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure_title(fig, title)
    return save(fig, path)


@with_fonts
def line_plot(series: Dict[str, Sequence[float]], *, x=None, xticklabels=None, title: str = "",
              xlabel: str = "", ylabel: str = "", logy: bool = False, path=None) -> Figure:
    """A few named curves ``{"name": ys}`` on one axis (markers, grid, legend). With
    ``xticklabels`` (one per point, e.g. tokens) the x axis goes through :func:`token_axis`
    and the figure widens with them up to 16 inches."""
    n = len(xticklabels) if xticklabels is not None else 0
    fig = new_figure(span(n, 0.16, 2.5, 7.5, 16.0), 4.4 if n else 4.2)
    ax = fig.add_subplot()
    for name, ys in series.items():
        xs = range(len(ys)) if x is None else x
        ax.plot(xs, ys, marker="o", ms=3, lw=1.5, label=name)
    if xticklabels is not None:
        token_axis(ax, xticklabels, "x")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    figure_title(fig, title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return save(fig, path)


#: Widest a bar's name may be before it wraps onto another line (points, at NAME_PT).
NAME_WIDTH_PT = 230.0
NAME_PT = 9.0


def _name_axis(ax, names: Sequence[str]) -> int:
    """Label the bars of a horizontal bar chart with their whole ``names`` (never cut: a long
    name wraps onto more lines); returns the number of label lines, for the figure height."""
    shown = [wrap_text(displayable(str(n)), NAME_WIDTH_PT, NAME_PT).replace("$", r"\$") for n in names]
    ax.set_yticks(range(len(shown)), shown, fontsize=NAME_PT)
    return sum(s.count("\n") + 1 for s in shown)


@with_fonts
def bar_chart(values: Dict[str, float], *, title: str = "", xlabel: str = "", logx: bool = False,
              path=None) -> Figure:
    """Named values as horizontal bars (first at the top), each bar labelled with its value and
    its whole name (long names wrap; the figure grows to fit them)."""
    names = list(values)
    v = np.asarray([values[k] for k in names], np.float64)
    fig = new_figure(9.0, 1.0)
    ax = fig.add_subplot()
    ax.barh(range(len(names)), v, color="tab:green")
    lines = _name_axis(ax, names)
    fig.set_figheight(max(0.3 * len(names), 0.17 * lines) + 1.8)
    ax.invert_yaxis()
    if logx:
        ax.set_xscale("log")
    for i, x in enumerate(v):
        ax.text(x, i, f" {x:.1e}", va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    figure_title(fig, title)
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)


# ----------------------------------------------------------------------------- interventions (jaxformer.interp)
@with_fonts
def patching_heatmap(table_LX, *, labels: Optional[Sequence[str]] = None, over: str = "position",
                     clean: Optional[float] = None, corrupted: Optional[float] = None,
                     title: str = "activation patching", metric: str = "logit difference",
                     annotate: Optional[bool] = None, cmap: str = "RdBu", path=None) -> Figure:
    """An activation-patching table (``interp.patch_activations`` or ``attribution_patching``)
    ``[L, T]`` (``over="position"``, ``labels``: the tokens) or ``[L, H]`` (``over="head"``) as
    a layer x position / head heatmap. With the ``clean`` and ``corrupted`` runs' metric the
    cells show the fraction of the clean metric each patch restores (0 = corrupted, 1 =
    clean); otherwise the metric itself, centred on the corrupted run when given. A diverging
    colour map (``cmap``, default: blue restores, red hurts) centred on the corrupted run;
    ``annotate`` as in :func:`matrix_heatmap`."""
    m = np.asarray(table_LX, np.float64)
    L, X = m.shape
    if clean is not None and corrupted is not None and clean != corrupted:
        m, unit, mid = (m - corrupted) / (clean - corrupted), f"fraction of clean {metric} restored", 0.0
    else:
        unit, mid = metric, corrupted if corrupted is not None else 0.0
    reach = max(float(np.max(np.abs(m - mid))), 1e-9)
    if over == "position":
        xl = list(labels) if labels is not None else [str(i) for i in range(X)]
        xlabel = "position patched (token)"
    else:
        xl, xlabel = [f"H{h}" for h in range(X)], "head patched"
    return matrix_heatmap(m, xlabels=xl, ylabels=[f"layer {l}" for l in range(L)], title=title,
                          xlabel=xlabel, ylabel="layer", cbar_label=unit, cmap=cmap,
                          vmin=mid - reach, vmax=mid + reach, annotate=annotate, path=path)


@with_fonts
def logit_attribution(labels: Sequence[str], values, *, title: str = "direct logit attribution",
                      xlabel: str = "contribution to the logit difference", top: Optional[int] = None,
                      path=None) -> Figure:
    """What each part of the residual stream adds to a logit or logit difference
    (``interp.direct_logit_attribution``: one value per part, e.g. ``attr[:, 0, 0] -
    attr[:, 0, 1]``) as signed horizontal bars in the model's order (blue adds, red
    subtracts), each with its whole name, the ``top`` largest in magnitude only when given."""
    v = np.asarray(values, np.float64).reshape(-1)
    names = list(labels)
    if len(names) != len(v):
        raise DataError(f"labels has {len(names)} entries but values {len(v)}")
    if top is not None and top < len(v):
        keep = np.sort(np.argsort(-np.abs(v))[:top])
        names, v = [names[i] for i in keep], v[keep]
    fig = new_figure(8.0, 1.0)
    ax = fig.add_subplot()
    ax.barh(range(len(v)), v, color=np.where(v >= 0, "tab:blue", "tab:red"))
    lines = _name_axis(ax, names)
    fig.set_figheight(span(max(len(v), 0.6 * lines), 0.26, 1.8, 3.0, 14.0))
    ax.invert_yaxis()
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    figure_title(fig, title)
    return save(fig, path)


@with_fonts
def head_detector_scores(scores: Dict[str, np.ndarray], *, title: str = "attention-head detectors",
                         annotate: Optional[bool] = None, cmap: str = CMAP, path=None) -> Figure:
    """Detector scores ``{kind: [L, H]}`` (``interp.detect_heads``) as one layer x head panel
    per kind on a shared 0-1 scale in ``cmap`` (mean attention mass on where that kind of head
    looks), the scores written in the cells up to 64 heads (``annotate``)."""
    kinds = list(scores)
    L, H = np.asarray(scores[kinds[0]]).shape
    fig = new_figure(span(len(kinds) * H, 0.5, 2.5, 5.0, 16.0), span(L, 0.45, 2.0, 3.0, 10.0))
    axes = np.atleast_1d(fig.subplots(1, len(kinds), sharey=True))
    for i, (ax, kind) in enumerate(zip(axes, kinds)):
        m = np.asarray(scores[kind], np.float64)
        im = ax.imshow(m, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        token_axis(ax, [f"H{h}" for h in range(H)], "x", fontsize=9, rotation=0)
        token_axis(ax, [f"layer {l}" for l in range(L)], "y", fontsize=9, show=i == 0)
        ax.set_title(kind, fontsize=10)
        if annotate or (annotate is None and L * H <= 64):
            annotate_cells(ax, m, im, "{:.2f}", fontsize=7)
    fig.colorbar(im, ax=list(axes), label="mean attention on target (0-1)")
    figure_title(fig, title)
    return save(fig, path)
