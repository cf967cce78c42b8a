"""Matplotlib figures for looking inside a model. Headless-safe: figures are built with
``matplotlib.figure.Figure`` (Agg canvas), never ``pyplot``, so no display, no global state.

Every function returns the :class:`~matplotlib.figure.Figure` and, given ``path``, also
writes it as a PNG of exactly ``figsize * dpi`` pixels (layout by the constrained engine,
no tight-bbox cropping). Inputs are NumPy/JAX arrays; shapes as in :mod:`jaxformer.functional`.

Text stays legible at any length and in any script (:mod:`jaxformer.viz.text`): token axes
go through :func:`token_axis` (labels at 8 pt, thinned to every k-th rather than shrunk), the
text is drawn with the :func:`font_chain` fallback fonts and any character none of them has
is written as ``<U+XXXX>``; titles sit above every axes and colour bar; each colour bar has
one quantity and its unit. matplotlib is imported when a figure is drawn, not with this module.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import TYPE_CHECKING, Dict, Optional, Sequence

import numpy as np

from jaxformer.errors import DataError
from jaxformer.runfolder import read_metrics
from jaxformer.viz.text import (MIN_PT, TOKEN_PT, displayable, font_chain, make_displayable, token_axis,
                                wrap_text)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["attention_heatmap", "head_grid", "layer_head_grid", "positional_encoding_heatmap",
           "positional_curves", "loss_curves", "layer_similarity",
           "residual_norms", "logit_lens_heatmap", "sampling_comparison", "matrix_heatmap",
           "line_plot", "bar_chart", "head_summary", "token_logprobs", "save",
           "patching_heatmap", "logit_attribution", "head_detector_scores",
           "token_axis", "font_chain", "displayable", "MIN_PT", "TOKEN_PT"]

DPI = 100
CMAP = "viridis"
WEIGHT_LABEL = "attention weight (0-1)"
TITLE_PT = 12.0


def save(fig: Figure, path: Optional[str | os.PathLike], dpi: int = DPI) -> Figure:
    """Make every text of ``fig`` drawable (:func:`jaxformer.viz.text.make_displayable`) and
    write it as a PNG to ``path`` (creating its folder) when ``path`` is given.

    The PNG is written to a temporary file beside ``path`` and renamed over it, so a reader
    (or a crash mid-write) never sees a half-written figure.
    """
    make_displayable(fig)
    if path is not None:
        path = os.fspath(path)
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fig.savefig(fh, dpi=dpi, format="png")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return fig


def _fonts(fn):
    """Build the figure with the fallback font chain as the default family, so every text
    (and every tick made later) can draw CJK and emoji when such a font is installed."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"font.family": list(font_chain())}):
            return fn(*args, **kwargs)
    return wrapper


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _span(n: int, per: float, extra: float, lo: float, hi: float) -> float:
    """A figure side in inches that grows with ``n`` items up to a cap."""
    return float(np.clip(per * n + extra, lo, hi))


def _title(fig: Figure, text: Optional[str], fontsize: float = TITLE_PT):
    """The figure's title above every axes and colour bar (a suptitle, so the constrained
    layout reserves room for it), wrapped to the figure's width."""
    if not text:
        return None
    width_pt = 0.94 * fig.get_figwidth() * 72
    return fig.suptitle(wrap_text(displayable(text), width_pt, fontsize), fontsize=fontsize)


def _draw_matrix(ax, w_TS, labels_q, labels_k, *, annotate: Optional[bool] = None, vmax=None,
                 ticks: bool = True, cmap: str = CMAP, show_x: bool = True, show_y: bool = True):
    """One attention matrix on ``ax``: queries down the rows, keys along the columns, token
    labels by :func:`token_axis` (``None`` labels: positions)."""
    w = np.asarray(w_TS, np.float64)
    T, S = w.shape
    im = ax.imshow(w, cmap=cmap, vmin=0.0, vmax=1.0 if vmax is None else vmax,
                   interpolation="nearest", aspect="equal")
    if ticks:
        token_axis(ax, labels_k, "x", n=S, show=show_x)
        token_axis(ax, labels_q, "y", n=T, show=show_y)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if annotate is None:
        annotate = max(T, S) <= 12
    if annotate:
        top = 1.0 if vmax is None else vmax
        for t in range(T):
            for s in range(S):
                ax.text(s, t, f"{w[t, s]:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if w[t, s] > 0.6 * top else "white")
    return im


@_fonts
def attention_heatmap(weights_TS, labels: Sequence[str], *, labels_k: Optional[Sequence[str]] = None,
                      title: str = "attention weights", annotate: Optional[bool] = None,
                      path=None, size: Optional[float] = None) -> Figure:
    """One attention matrix ``[T, S]`` with token labels on both axes (query rows, key
    columns), a colour bar, and the values written in the cells when ``T, S <= 12``
    (or ``annotate=True``). The figure grows with the tokens up to 12 inches; past that,
    every k-th token is labelled (see :func:`token_axis`)."""
    w = np.asarray(weights_TS)
    T, S = w.shape
    side = size or _span(max(T, S), 0.16, 2.6, 4.2, 12.0)
    fig = _figure(side + 1.3, side + 0.3)
    ax = fig.add_subplot()
    im = _draw_matrix(ax, w, list(labels), list(labels_k or labels), annotate=annotate)
    ax.set_xlabel("key (attended-to token)")
    ax.set_ylabel("query (attending token)")
    _title(fig, title)
    fig.colorbar(im, ax=ax, label=WEIGHT_LABEL, shrink=0.8)
    return save(fig, path)


def _cell(T: int, rows: int, cols: int) -> float:
    """Side of one panel of a grid in inches: grows with the tokens, the whole grid capped."""
    return float(max(min(_span(T, 0.045, 1.5, 1.9, 3.2), 19.0 / cols, 17.0 / rows), 1.3))


def _grid(fig: Figure, mats, rows: int, cols: int, labels, panel_titles, *,
          row_titles: Optional[Sequence[str]] = None):
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
        lowest = i + cols >= N
        im = _draw_matrix(ax, mats[i], labels, labels, annotate=False, show_x=lowest, show_y=c == 0)
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


@_fonts
def head_grid(weights_HTT, labels: Sequence[str], *, layer: Optional[int] = None,
              title: Optional[str] = None, head_titles: Optional[Sequence[str]] = None,
              path=None) -> Figure:
    """All heads of one layer side by side (up to 4 per row): key labels under the bottom
    panels, query labels left of the first column, thinned as in :func:`token_axis`."""
    w = np.asarray(weights_HTT)
    H, T, _ = w.shape
    cols = min(H, 4)
    rows = math.ceil(H / cols)
    cell = _cell(T, rows, cols)
    side = _labels_width(labels, T)
    fig = _figure(cols * (cell + 0.1) + side + 1.7, rows * (cell + 0.35) + side + 0.8)
    _title(fig, title or (f"layer {layer}: all {H} heads" if layer is not None else f"all {H} heads"))
    _grid(fig, w, rows, cols, labels, list(head_titles) if head_titles else [f"head {h}" for h in range(H)])
    return save(fig, path)


@_fonts
def layer_head_grid(weights_LHTT, labels: Optional[Sequence[str]] = None, *,
                    title: str = "attention of every layer (rows) and head (columns)",
                    path=None) -> Figure:
    """Every layer (rows) x head (columns) as small heatmaps: head titles above the top row,
    layer titles right of the last column, key labels under the bottom row and query labels
    left of the first column (token positions when ``labels`` is ``None``), thinned as in
    :func:`token_axis` so they stay legible."""
    w = np.asarray(weights_LHTT)
    L, H, T, _ = w.shape
    cell = _cell(T, L, H)
    side = _labels_width(labels, T)
    fig = _figure(H * (cell + 0.1) + side + 1.9, L * (cell + 0.22) + side + 1.1)
    _title(fig, title)
    _grid(fig, w.reshape(L * H, T, T), L, H, labels,
          [f"head {h}" if i < H else None for i, h in enumerate(list(range(H)) * L)],
          row_titles=[f"layer {layer}" for layer in range(L)])
    return save(fig, path)


@_fonts
def positional_encoding_heatmap(pe_PD, *, title: str = "sinusoidal positional encoding",
                                path=None) -> Figure:
    """The table ``[P, D]``: position down the rows, dimension along the columns."""
    pe = np.asarray(pe_PD)
    fig = _figure(8.0, 5.0)
    ax = fig.add_subplot()
    im = ax.imshow(pe, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xlabel("embedding dimension")
    ax.set_ylabel("position")
    _title(fig, title)
    fig.colorbar(im, ax=ax, label="encoding value (-1 to 1)")
    return save(fig, path)


@_fonts
def positional_curves(pe_PD, dims: Sequence[int] = (0, 1, 10, 20, 30), *,
                      title: str = "a few dimensions of the positional encoding", path=None) -> Figure:
    """Selected dimensions of ``pe [P, D]`` as curves over position (low dimensions turn fast,
    high ones slowly)."""
    pe = np.asarray(pe_PD)
    fig = _figure(9.0, 4.0)
    ax = fig.add_subplot()
    for d in dims:
        if d < pe.shape[1]:
            ax.plot(pe[:, d], label=f"dim {d} ({'sin' if d % 2 == 0 else 'cos'})", lw=1.5)
    ax.set_xlabel("position")
    ax.set_ylabel("encoding value")
    _title(fig, title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    return save(fig, path)


@_fonts
def loss_curves(metrics, *, title: str = "training and validation loss", path=None) -> Figure:
    """Train / val loss against step from a list of metric dicts, a ``metrics.jsonl`` path or
    a run folder (read by :func:`jaxformer.runfolder.read_metrics`; entries without
    ``val_loss`` are train-only logs). Raises :class:`DataError` for a path with no metrics."""
    if isinstance(metrics, (str, os.PathLike)):
        source, metrics = metrics, read_metrics(metrics)
        if not metrics:
            raise DataError(f"no metrics records at {os.fspath(source)!r} (expected a run folder "
                            f"or a metrics.jsonl file)")
    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    for key, style in (("train_loss", dict(lw=1.2)), ("val_loss", dict(lw=2.0, marker="o", ms=4))):
        pts = [(m["step"], m[key]) for m in metrics if m.get(key) is not None]
        if pts:
            s, v = zip(*pts)
            ax.plot(s, v, label=key.replace("_", " "), **style)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats / token)")
    _title(fig, title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def _depth_names(n: int):
    return ["emb"] + [f"L{i}" for i in range(1, n)]


@_fonts
def layer_similarity(sim_LL, *, title: str = "cosine similarity of token representations across depth",
                     path=None) -> Figure:
    """An ``[L+1, L+1]`` matrix from :func:`jaxformer.interp.activations.layer_cosine_similarity`
    (entry i, j: mean over tokens of cos(resid_i, resid_j); 0 = embedding)."""
    s = np.asarray(sim_LL)
    n = s.shape[0]
    side = _span(n, 0.35, 2.4, 4.2, 12.0)
    fig = _figure(side + 1.4, side + 0.2)
    ax = fig.add_subplot()
    im = ax.imshow(s, cmap="magma", vmin=min(0.0, float(s.min())), vmax=1.0, interpolation="nearest")
    token_axis(ax, _depth_names(n), "x", fontsize=9)
    token_axis(ax, _depth_names(n), "y", fontsize=9)
    if n <= 13:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{s[i, j]:.2f}", ha="center", va="center", fontsize=7.5,
                        color="black" if s[i, j] > 0.7 else "white")
    ax.set_xlabel("residual stream after block (emb = before block 1)")
    ax.set_ylabel("residual stream after block")
    _title(fig, title, 11)
    fig.colorbar(im, ax=ax, label="mean cosine similarity (-1 to 1)")
    return save(fig, path)


@_fonts
def residual_norms(resid_LTD, labels: Sequence[str], *, title: str = "norm of each token's residual stream",
                   path=None) -> Figure:
    """``||resid[l, t]||`` as a heatmap (depth x token)."""
    n = np.linalg.norm(np.asarray(resid_LTD, np.float64), axis=-1)
    L, T = n.shape
    fig = _figure(_span(T, 0.16, 3.0, 5.0, 14.0), _span(L, 0.3, 2.8, 3.5, 9.0))
    ax = fig.add_subplot()
    im = ax.imshow(n, cmap=CMAP, aspect="auto", interpolation="nearest")
    token_axis(ax, labels, "x", n=T)
    token_axis(ax, _depth_names(L), "y", fontsize=9)
    ax.set_xlabel("token")
    ax.set_ylabel("depth")
    _title(fig, title)
    fig.colorbar(im, ax=ax, label="L2 norm of the residual vector")
    return save(fig, path)


@_fonts
def logit_lens_heatmap(lens_LTV, labels: Sequence[str], decode, *, targets: Optional[Sequence[int]] = None,
                       title: str = "logit lens: top prediction after each block", path=None) -> Figure:
    """Logit lens ``[L+1, T, V]`` (from :func:`jaxformer.interp.activations.capture`): each cell shows the
    most likely next token read from that depth (``decode(id) -> str``; written in the cells
    while they are wide enough, up to 40 tokens), coloured by its probability. With
    ``targets`` (the true next ids, ``[T]``) correct cells are outlined."""
    x = np.asarray(lens_LTV, np.float64)
    x = x - x.max(-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(-1, keepdims=True)
    top = p.argmax(-1)
    top_p = p.max(-1)
    L, T = top.shape
    fig = _figure(_span(T, 0.5, 2.5, 6.0, 16.0), _span(L, 0.4, 2.9, 3.5, 10.0))
    ax = fig.add_subplot()
    im = ax.imshow(top_p, cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for layer in range(L):
        for t in range(T):
            if T <= 40:
                word = displayable(str(decode(int(top[layer, t]))))[:6].replace("$", r"\$")
                ax.text(t, layer, word, ha="center", va="center", fontsize=MIN_PT if T > 20 else 8,
                        color="white" if top_p[layer, t] > 0.6 else "black")
            if targets is not None and t < len(targets) and top[layer, t] == targets[t]:
                ax.add_patch(_box(t, layer))
    token_axis(ax, labels, "x", n=T)
    token_axis(ax, _depth_names(L), "y", fontsize=9)
    ax.set_xlabel("input token (prediction is for the token after it)")
    ax.set_ylabel("residual stream after block")
    _title(fig, title + (" (outlined: equals the true next token)" if targets is not None else ""), 11)
    fig.colorbar(im, ax=ax, label="probability of the top token (0-1)")
    return save(fig, path)


def _box(x, y):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="crimson", lw=1.5)


@_fonts
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
    fig = _figure(max(4.2, 0.25 * len(order) + 1.2) * cols, 3.3 * rows + 0.5)
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
    _title(fig, title)
    return save(fig, path)


@_fonts
def matrix_heatmap(m, *, xlabels=None, ylabels=None, title: str = "", xlabel: str = "", ylabel: str = "",
                   cbar_label: str = "value", cmap: str = CMAP, vmin=None, vmax=None,
                   annotate: Optional[bool] = None, fmt: str = "{:.2f}", path=None) -> Figure:
    """Any matrix ``[R, C]`` as a labelled heatmap with a colour bar labelled ``cbar_label``
    (say what the one quantity is and its unit), the values written in the cells when it is
    small (at most 12 x 12) or ``annotate=True``. Row and column labels go through
    :func:`token_axis`."""
    m = np.asarray(m, np.float64)
    R, C = m.shape
    fig = _figure(_span(C, 0.3, 3.4, 5.0, 13.0), _span(R, 0.22, 2.4, 3.4, 11.0))
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    if xlabels is not None:
        token_axis(ax, xlabels, "x")
    if ylabels is not None:
        token_axis(ax, ylabels, "y")
    if annotate or (annotate is None and R <= 12 and C <= 12):
        _annotate(ax, m, im, fmt)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _title(fig, title, 11)
    fig.colorbar(im, ax=ax, label=cbar_label)
    return save(fig, path)


def _annotate(ax, m, im, fmt: str = "{:.2f}", fontsize: float = 8):
    lo, hi = im.get_clim()
    cmap = im.get_cmap()
    for r in range(m.shape[0]):
        for c in range(m.shape[1]):
            rgb = cmap(float(np.clip((m[r, c] - lo) / max(hi - lo, 1e-12), 0, 1)))[:3]
            light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 0.55
            ax.text(c, r, fmt.format(m[r, c]), ha="center", va="center", fontsize=fontsize,
                    color="black" if light else "white")


@_fonts
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
    flat = {k: np.asarray(stats[k], np.float64).reshape(-1, 1) for k in
            ("prev", "first", "self", "entropy", "norm_entropy", "mean_offset")}
    panels = [
        (np.hstack([flat["prev"], flat["first"], flat["self"]]), ["previous", "first", "self"],
         "weight on key", "mean attention weight (0-1)", CMAP, 0.0, 1.0),
        (flat["entropy"], ["entropy"], "entropy", "entropy (nats)", "magma", 0.0,
         max(float(flat["entropy"].max()), 1e-6)),
        (flat["norm_entropy"], ["normalised"], "normalised entropy",
         "normalised entropy (0 = one key, 1 = uniform)", "cividis", 0.0, 1.0),
        (flat["mean_offset"], ["offset"], "mean offset", "mean offset of attended key (tokens)", "plasma",
         0.0, max(float(flat["mean_offset"].max()), 1.0)),
    ]
    n = L * H
    fig = _figure(11.0, _span(n, 0.24, 2.6, 4.0, 14.0))
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
            _annotate(ax, m, im, "{:.2f}", fontsize=8)
        cb = fig.colorbar(im, ax=ax, location="bottom", shrink=0.95, aspect=12)
        width_pt = 72 * 0.8 * fig.get_figwidth() * (m.shape[1] + 0.6) / total
        cb.set_label(wrap_text(unit, width_pt, 9), fontsize=9)
    axes[0].set_ylabel("layer, head")
    _title(fig, title)
    return save(fig, path)


@_fonts
def token_logprobs(logprobs, labels: Sequence[str], *, second=None, title: str = "log-probability of each token",
                   xlabel: str = "token", path=None) -> Figure:
    """The log-probability (nats) of each token ``[T]`` as bars, one per token labelled by
    :func:`token_axis`; with ``second`` (``[T]``, e.g. the runner-up's log-probability) drawn
    as dots over them. The figure widens with the tokens up to 16 inches."""
    lp = np.asarray(logprobs, np.float64)
    T = lp.shape[0]
    fig = _figure(_span(T, 0.16, 2.5, 6.0, 16.0), 4.4)
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
    _title(fig, title)
    return save(fig, path)


@_fonts
def line_plot(series: Dict[str, Sequence[float]], *, x=None, xticklabels=None, title: str = "",
              xlabel: str = "", ylabel: str = "", logy: bool = False, path=None) -> Figure:
    """A few named curves ``{"name": ys}`` on one axis (markers, grid, legend). With
    ``xticklabels`` (one per point, e.g. tokens) the x axis goes through :func:`token_axis`
    and the figure widens with them up to 16 inches."""
    n = len(xticklabels) if xticklabels is not None else 0
    fig = _figure(_span(n, 0.16, 2.5, 7.5, 16.0), 4.4 if n else 4.2)
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
    _title(fig, title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return save(fig, path)


@_fonts
def bar_chart(values: Dict[str, float], *, title: str = "", xlabel: str = "", logx: bool = False,
              path=None) -> Figure:
    """Named values as horizontal bars (first at the top), each bar labelled with its value."""
    names = list(values)
    v = np.asarray([values[k] for k in names], np.float64)
    fig = _figure(9.0, 0.3 * len(names) + 1.8)
    ax = fig.add_subplot()
    ax.barh(range(len(names)), v, color="tab:green")
    token_axis(ax, names, "y", fontsize=9)
    ax.invert_yaxis()
    if logx:
        ax.set_xscale("log")
    for i, x in enumerate(v):
        ax.text(x, i, f" {x:.1e}", va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    _title(fig, title)
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)


# ----------------------------------------------------------------------------- interventions (jaxformer.interp)
@_fonts
def patching_heatmap(table_LX, *, labels: Optional[Sequence[str]] = None, over: str = "position",
                     clean: Optional[float] = None, corrupted: Optional[float] = None,
                     title: str = "activation patching", metric: str = "logit difference", path=None) -> Figure:
    """An activation-patching table (``interp.patch_activations`` or ``attribution_patching``)
    ``[L, T]`` (``over="position"``, ``labels``: the tokens) or ``[L, H]`` (``over="head"``) as
    a layer x position / head heatmap. With the ``clean`` and ``corrupted`` runs' metric the
    cells show the fraction of the clean metric each patch restores (0 = corrupted, 1 =
    clean); otherwise the metric itself, centred on the corrupted run when given. A diverging
    colour map: blue restores, red hurts."""
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
                          xlabel=xlabel, ylabel="layer", cbar_label=unit, cmap="RdBu",
                          vmin=mid - reach, vmax=mid + reach, path=path)


@_fonts
def logit_attribution(labels: Sequence[str], values, *, title: str = "direct logit attribution",
                      xlabel: str = "contribution to the logit difference", top: Optional[int] = None,
                      path=None) -> Figure:
    """What each part of the residual stream adds to a logit or logit difference
    (``interp.direct_logit_attribution``: one value per part, e.g. ``attr[:, 0, 0] -
    attr[:, 0, 1]``) as signed horizontal bars in the model's order (blue adds, red
    subtracts), the ``top`` largest in magnitude only when given."""
    v = np.asarray(values, np.float64).reshape(-1)
    names = list(labels)
    if len(names) != len(v):
        raise DataError(f"labels has {len(names)} entries but values {len(v)}")
    if top is not None and top < len(v):
        keep = np.sort(np.argsort(-np.abs(v))[:top])
        names, v = [names[i] for i in keep], v[keep]
    fig = _figure(8.0, _span(len(v), 0.26, 1.8, 3.0, 14.0))
    ax = fig.add_subplot()
    ax.barh(range(len(v)), v, color=np.where(v >= 0, "tab:blue", "tab:red"))
    token_axis(ax, names, "y", fontsize=9)
    ax.invert_yaxis()
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    _title(fig, title)
    return save(fig, path)


@_fonts
def head_detector_scores(scores: Dict[str, np.ndarray], *, title: str = "attention-head detectors",
                         path=None) -> Figure:
    """Detector scores ``{kind: [L, H]}`` (``interp.detect_heads``) as one layer x head panel
    per kind on a shared 0-1 scale (mean attention mass on where that kind of head looks)."""
    kinds = list(scores)
    L, H = np.asarray(scores[kinds[0]]).shape
    fig = _figure(_span(len(kinds) * H, 0.5, 2.5, 5.0, 16.0), _span(L, 0.45, 2.0, 3.0, 10.0))
    axes = np.atleast_1d(fig.subplots(1, len(kinds), sharey=True))
    for i, (ax, kind) in enumerate(zip(axes, kinds)):
        m = np.asarray(scores[kind], np.float64)
        im = ax.imshow(m, cmap=CMAP, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        token_axis(ax, [f"H{h}" for h in range(H)], "x", fontsize=9, rotation=0)
        token_axis(ax, [f"layer {l}" for l in range(L)], "y", fontsize=9, show=i == 0)
        ax.set_title(kind, fontsize=10)
        if L * H <= 64:
            _annotate(ax, m, im, "{:.2f}", fontsize=7)
    fig.colorbar(im, ax=list(axes), label="mean attention on target (0-1)")
    _title(fig, title)
    return save(fig, path)
