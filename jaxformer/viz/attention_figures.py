"""Attention figures: one head as a labelled heatmap, all heads of a layer, every layer x
head, and what each head does (:func:`jaxformer.interp.heads.head_statistics`).

Every function returns a :func:`jaxformer.viz.figure.figure_class` figure (a matplotlib
``Figure`` that a notebook shows inline) and, given ``path``, also writes it as a PNG of
exactly ``figsize * dpi`` pixels. Token axes go through :func:`jaxformer.viz.text.token_axis`
(labels at 8 pt, thinned to every k-th rather than shrunk). Heatmaps take ``cmap=`` (any
matplotlib colour-map name; the labs use ``"Blues"``) and ``annotate=`` (write each weight in
its cell; ``None``: when the matrix is small enough to read them).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, Optional, Sequence

import numpy as np

from jaxformer.viz.figure import (CMAP, WEIGHT_LABEL, annotate_cells, figure_title, new_figure, save, span,
                                  with_fonts)
from jaxformer.viz.text import TOKEN_PT, token_axis, wrap_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["attention_heatmap", "head_grid", "layer_head_grid", "head_summary"]

#: Largest side (tokens) whose weights are written in the cells when ``annotate=None``.
ANNOTATE_MAX = 12


def _draw_matrix(ax, w_TS, labels_q, labels_k, *, annotate: Optional[bool] = None, cmap: str = CMAP,
                 show_x: bool = True, show_y: bool = True, fontsize: float = 8):
    """One attention matrix on ``ax`` on the fixed 0-1 scale: queries down the rows, keys
    along the columns, token labels by :func:`token_axis` (``None`` labels: positions)."""
    w = np.asarray(w_TS, np.float64)
    T, S = w.shape
    im = ax.imshow(w, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
    token_axis(ax, labels_k, "x", n=S, show=show_x)
    token_axis(ax, labels_q, "y", n=T, show=show_y)
    if annotate is None:
        annotate = max(T, S) <= ANNOTATE_MAX
    if annotate:
        annotate_cells(ax, w, im, fontsize=fontsize)
    return im


@with_fonts
def attention_heatmap(weights_TS, labels: Sequence[str], *, labels_k: Optional[Sequence[str]] = None,
                      title: str = "attention weights", annotate: Optional[bool] = None, cmap: str = CMAP,
                      path=None, size: Optional[float] = None) -> Figure:
    """One attention matrix ``[T, S]`` with token labels on both axes (query rows, key
    columns), a 0-1 colour bar in ``cmap``, and the values written in the cells when
    ``T, S <= 12`` (or ``annotate=True``). The figure grows with the tokens up to 12 inches;
    past that, every k-th token is labelled (see :func:`token_axis`)."""
    w = np.asarray(weights_TS)
    T, S = w.shape
    side = size or span(max(T, S), 0.16, 2.6, 4.2, 12.0)
    fig = new_figure(side + 1.3, side + 0.3)
    ax = fig.add_subplot()
    im = _draw_matrix(ax, w, list(labels), list(labels_k or labels), annotate=annotate, cmap=cmap)
    ax.set_xlabel("key (attended-to token)")
    ax.set_ylabel("query (attending token)")
    figure_title(fig, title)
    fig.colorbar(im, ax=ax, label=WEIGHT_LABEL, shrink=0.8)
    return save(fig, path)


def _cell(T: int, rows: int, cols: int) -> float:
    """Side of one panel of a grid in inches: grows with the tokens, the whole grid capped."""
    return float(max(min(span(T, 0.045, 1.5, 1.9, 3.2), 19.0 / cols, 17.0 / rows), 1.3))


def _grid(fig: Figure, mats, rows: int, cols: int, labels, panel_titles, *, annotate: bool = False,
          cmap: str = CMAP, row_titles: Optional[Sequence[str]] = None):
    """Panels ``mats [N, T, T]`` in a ``rows x cols`` grid: key labels under the lowest panel
    of each column, query labels left of the first column, ``panel_titles`` above each panel
    (``None`` entries: none), ``row_titles`` right of the last column; one colour bar."""
    N, T, S = mats.shape
    axes = fig.subplots(rows, cols, squeeze=False)
    im = None
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        ax = axes[r, c]
        if i >= N:
            ax.axis("off")
            continue
        im = _draw_matrix(ax, mats[i], labels, labels, annotate=annotate, cmap=cmap,
                          show_x=i + cols >= N, show_y=c == 0, fontsize=7)
        if panel_titles[i]:
            ax.set_title(panel_titles[i], fontsize=9)
        if row_titles is not None and (c == cols - 1 or i == N - 1):
            ax.yaxis.set_label_position("right")
            ax.set_ylabel(row_titles[r], rotation=270, labelpad=12, fontsize=9)
    fig.supxlabel("key (attended-to token)", fontsize=10)
    fig.supylabel("query (attending token)", fontsize=10)
    fig.colorbar(im, ax=axes, label=WEIGHT_LABEL, shrink=min(0.8, 4.0 / max(rows * _cell(T, rows, cols), 1)))
    return axes


def _labels_width(labels, T: int) -> float:
    """Room in inches that query labels take left of a panel (for the figure size)."""
    longest = max((len(str(s)) for s in labels), default=1) if labels is not None else 3
    return min(longest + 4, 18) * 0.62 * TOKEN_PT / 72 + 0.2


@with_fonts
def head_grid(weights_HTT, labels: Sequence[str], *, layer: Optional[int] = None,
              title: Optional[str] = None, head_titles: Optional[Sequence[str]] = None,
              annotate: bool = False, cmap: str = CMAP, path=None) -> Figure:
    """All heads of one layer side by side (up to 4 per row): key labels under the bottom
    panels, query labels left of the first column, thinned as in :func:`token_axis`; one 0-1
    colour bar in ``cmap``. ``annotate=True`` writes each weight in its cell (the panels
    grow to fit the numbers)."""
    w = np.asarray(weights_HTT)
    H, T, _ = w.shape
    cols = min(H, 4)
    rows = math.ceil(H / cols)
    cell = max(_cell(T, rows, cols), 0.3 * T if annotate else 0.0)
    side = _labels_width(labels, T)
    fig = new_figure(cols * (cell + 0.1) + side + 1.7, rows * (cell + 0.35) + side + 0.8)
    figure_title(fig, title or (f"layer {layer}: all {H} heads" if layer is not None else f"all {H} heads"))
    _grid(fig, w, rows, cols, labels, list(head_titles) if head_titles else [f"head {h}" for h in range(H)],
          annotate=annotate, cmap=cmap)
    return save(fig, path)


@with_fonts
def layer_head_grid(weights_LHTT, labels: Optional[Sequence[str]] = None, *,
                    title: str = "attention of every layer (rows) and head (columns)",
                    annotate: bool = False, cmap: str = CMAP, path=None) -> Figure:
    """Every layer (rows) x head (columns) as small heatmaps: head titles above the top row,
    layer titles right of the last column, key labels under the bottom row and query labels
    left of the first column (token positions when ``labels`` is ``None``), thinned as in
    :func:`token_axis` so they stay legible; ``annotate`` and ``cmap`` as in :func:`head_grid`."""
    w = np.asarray(weights_LHTT)
    L, H, T, _ = w.shape
    cell = max(_cell(T, L, H), 0.3 * T if annotate else 0.0)
    side = _labels_width(labels, T)
    fig = new_figure(H * (cell + 0.1) + side + 1.9, L * (cell + 0.22) + side + 1.1)
    figure_title(fig, title)
    _grid(fig, w.reshape(L * H, T, T), L, H, labels,
          [f"head {h}" if i < H else None for i, h in enumerate(list(range(H)) * L)],
          annotate=annotate, cmap=cmap, row_titles=[f"layer {layer}" for layer in range(L)])
    return save(fig, path)


def _summary_panels(stats: Dict[str, np.ndarray]) -> list:
    """``(matrix [L*H, k], column names, panel title, colour-bar label, cmap, lo, hi)`` for each
    panel of :func:`head_summary`."""
    flat = {k: np.asarray(stats[k], np.float64).reshape(-1, 1) for k in
            ("prev", "first", "self", "entropy", "norm_entropy", "mean_offset")}
    return [
        (np.hstack([flat["prev"], flat["first"], flat["self"]]), ["previous", "first", "self"],
         "weight on key", "mean attention weight (0-1)", CMAP, 0.0, 1.0),
        (flat["entropy"], ["entropy"], "entropy", "entropy (nats)", "magma", 0.0,
         max(float(flat["entropy"].max()), 1e-6)),
        (flat["norm_entropy"], ["normalised"], "normalised entropy",
         "normalised entropy (0 = one key, 1 = uniform)", "cividis", 0.0, 1.0),
        (flat["mean_offset"], ["offset"], "mean offset", "mean offset of attended key (tokens)", "plasma",
         0.0, max(float(flat["mean_offset"].max()), 1.0)),
    ]


@with_fonts
def head_summary(stats: Dict[str, np.ndarray], *, title: str = "what each head does",
                 path=None) -> Figure:
    """What each head does, from :func:`jaxformer.interp.heads.head_statistics` (``[L, H]`` arrays;
    one head per row, ``L0 H0``, ``L0 H1``, ...), one quantity per colour scale:

    - mean attention weight on the previous token, the first token and itself (0-1);
    - attention entropy in nats, the number :func:`jaxformer.interp.heads.describe_heads` prints;
    - normalised entropy (entropy / log(allowed keys): 0 = one key, 1 = uniform), what
      ``describe_heads`` calls ``diffuse`` above 0.8;
    - mean offset of the attended key, in tokens (1 for a previous-token head).

    Values are written in the cells up to 32 heads."""
    L, H = np.asarray(stats["prev"]).shape
    names = [f"L{layer} H{h}" for layer in range(L) for h in range(H)]
    panels = _summary_panels(stats)
    n = L * H
    fig = new_figure(11.0, span(n, 0.24, 2.6, 4.0, 14.0))
    axes = fig.subplots(1, len(panels), sharey=True,
                        gridspec_kw=dict(width_ratios=[p[0].shape[1] + 0.6 for p in panels]))
    total = sum(p[0].shape[1] + 0.6 for p in panels)
    for i, (ax, (m, cols, name, unit, cmap, lo, hi)) in enumerate(zip(axes, panels)):
        im = ax.imshow(m, cmap=cmap, vmin=lo, vmax=hi, aspect="auto", interpolation="nearest")
        if len(cols) > 1:
            token_axis(ax, cols, "x", fontsize=9, rotation=0)
        else:
            ax.set_xticks([])
        token_axis(ax, names, "y", fontsize=9, show=i == 0)
        ax.set_title(name, fontsize=10)
        if n <= 32:
            annotate_cells(ax, m, im, "{:.2f}", fontsize=8)
        cb = fig.colorbar(im, ax=ax, location="bottom", shrink=0.95, aspect=12)
        width_pt = 72 * 0.8 * fig.get_figwidth() * (m.shape[1] + 0.6) / total
        cb.set_label(wrap_text(unit, width_pt, 9), fontsize=9)
    axes[0].set_ylabel("layer, head")
    figure_title(fig, title)
    return save(fig, path)
