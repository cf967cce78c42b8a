"""Matplotlib figures for looking inside a model. Headless-safe: figures are built with
``matplotlib.figure.Figure`` (Agg canvas), never ``pyplot``, so no display, no global state.

Every function returns the :class:`~matplotlib.figure.Figure` and, given ``path``, also
writes it as a PNG of exactly ``figsize * dpi`` pixels (layout by the constrained engine,
no tight-bbox cropping). Inputs are NumPy/JAX arrays; shapes as in :mod:`jaxformer.functional`.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Dict, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from .errors import DataError

__all__ = ["attention_heatmap", "head_grid", "layer_head_grid", "positional_encoding_heatmap",
           "positional_curves", "loss_curves", "layer_similarity",
           "residual_norms", "logit_lens_heatmap", "sampling_comparison", "matrix_heatmap",
           "line_plot", "bar_chart", "save"]

DPI = 100
CMAP = "viridis"


def save(fig: Figure, path: Optional[str | os.PathLike], dpi: int = DPI) -> Figure:
    """Write ``fig`` as a PNG to ``path`` (creating its folder) when ``path`` is given.

    The PNG is written to a temporary file beside ``path`` and renamed over it, so a reader
    (or a crash mid-write) never sees a half-written figure.
    """
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


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _label_size(n: int) -> float:
    return float(np.clip(180.0 / max(n, 1), 5.0, 11.0))


def _rotation(labels) -> int:
    """Vertical tick labels unless a few short ones fit side by side."""
    labels = [str(x) for x in labels]
    return 0 if sum(len(x) + 1 for x in labels) <= 36 else 90


def _draw_matrix(ax, w_TS, labels_q, labels_k, *, annotate: Optional[bool] = None, vmax=None,
                 ticks: bool = True, cmap: str = CMAP, fontsize: Optional[float] = None):
    """One attention matrix on ``ax``: queries down the rows, keys along the columns."""
    w = np.asarray(w_TS, np.float64)
    T, S = w.shape
    im = ax.imshow(w, cmap=cmap, vmin=0.0, vmax=1.0 if vmax is None else vmax,
                   interpolation="nearest", aspect="equal")
    if ticks and labels_q is not None:
        fs = fontsize or _label_size(max(T, S))
        ax.set_xticks(range(S), labels_k, rotation=_rotation(labels_k), fontsize=fs)
        ax.set_yticks(range(T), labels_q, fontsize=fs)
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


def attention_heatmap(weights_TS, labels: Sequence[str], *, labels_k: Optional[Sequence[str]] = None,
                      title: str = "attention weights", annotate: Optional[bool] = None,
                      path=None, size: Optional[float] = None) -> Figure:
    """One attention matrix ``[T, S]`` with token labels on both axes (query rows, key
    columns), a colour bar, and the values written in the cells when ``T, S <= 12``
    (or ``annotate=True``)."""
    w = np.asarray(weights_TS)
    T, S = w.shape
    side = size or float(np.clip(0.45 * max(T, S) + 2.0, 4.0, 12.0))
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    im = _draw_matrix(ax, w, list(labels), list(labels_k or labels), annotate=annotate)
    ax.set_xlabel("key (attended-to token)")
    ax.set_ylabel("query (attending token)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="weight", shrink=0.8)
    return save(fig, path)


def head_grid(weights_HTT, labels: Sequence[str], *, layer: Optional[int] = None,
              title: Optional[str] = None, head_titles: Optional[Sequence[str]] = None,
              path=None) -> Figure:
    """All heads of one layer side by side (up to 4 per row), token labels on the outer axes."""
    w = np.asarray(weights_HTT)
    H, T, _ = w.shape
    cols = min(H, 4 if T <= 24 else 2)
    rows = math.ceil(H / cols)
    cell = float(np.clip(0.17 * T + 1.6, 2.6, 7.0))
    fs = float(np.clip(0.6 * cell * 72 / T, 5.0, 10.0))
    fig = _figure(cols * cell + 1.0, rows * cell + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    show_ticks = T <= 64
    im = None
    for h in range(rows * cols):
        ax = axes[h // cols, h % cols]
        if h >= H:
            ax.axis("off")
            continue
        im = _draw_matrix(ax, w[h], labels, labels, annotate=False, ticks=show_ticks, fontsize=fs)
        if show_ticks and h % cols:
            ax.set_yticklabels([])
        if show_ticks and h // cols < rows - 1 and h + cols < H:
            ax.set_xticklabels([])
        ax.set_title(head_titles[h] if head_titles else f"head {h}", fontsize=9)
    fig.supxlabel("key (attended-to token)", fontsize=10)
    fig.supylabel("query (attending token)", fontsize=10)
    fig.suptitle(title or (f"layer {layer}: all {H} heads" if layer is not None else f"all {H} heads"))
    fig.colorbar(im, ax=axes, label="weight", shrink=0.6)
    return save(fig, path)


def layer_head_grid(weights_LHTT, labels: Optional[Sequence[str]] = None, *,
                    title: str = "attention of every layer (rows) and head (columns)",
                    path=None) -> Figure:
    """Every layer (rows) x head (columns) as small heatmaps; token labels on the outer
    axes only when there are few tokens (T <= 16)."""
    w = np.asarray(weights_LHTT)
    L, H, T, _ = w.shape
    cell = 1.7 if T <= 16 else 1.4
    fig = _figure(H * cell + 1.6, L * cell + 0.9)
    axes = fig.subplots(L, H, squeeze=False)
    ticks = labels is not None and T <= 16
    im = None
    for layer in range(L):
        for h in range(H):
            ax = axes[layer, h]
            im = _draw_matrix(ax, w[layer, h], labels, labels, annotate=False, ticks=ticks)
            if ticks:
                if h:
                    ax.set_yticklabels([])
                if layer < L - 1:
                    ax.set_xticklabels([])
                ax.tick_params(labelsize=6)
            if layer == 0:
                ax.set_title(f"head {h}", fontsize=9)
            if h == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
    fig.suptitle(title)
    fig.supxlabel("key", fontsize=9)
    fig.colorbar(im, ax=axes, label="weight", shrink=0.6)
    return save(fig, path)


def positional_encoding_heatmap(pe_PD, *, title: str = "sinusoidal positional encoding",
                                path=None) -> Figure:
    """The table ``[P, D]``: position down the rows, dimension along the columns."""
    pe = np.asarray(pe_PD)
    fig = _figure(8.0, 5.0)
    ax = fig.add_subplot()
    im = ax.imshow(pe, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xlabel("embedding dimension")
    ax.set_ylabel("position")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="value")
    return save(fig, path)


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
    ax.set_ylabel("value")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    return save(fig, path)


def loss_curves(metrics, *, title: str = "training and validation loss", path=None) -> Figure:
    """Train / val loss against step from a list of metric dicts, a ``metrics.jsonl`` path or
    a run folder (read by :func:`jaxformer.checkpoint.read_metrics`; entries without
    ``val_loss`` are train-only logs). Raises :class:`DataError` for a path with no metrics."""
    if isinstance(metrics, (str, os.PathLike)):
        from .checkpoint import read_metrics

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
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def layer_similarity(sim_LL, *, title: str = "cosine similarity of token representations across depth",
                     path=None) -> Figure:
    """An ``[L+1, L+1]`` matrix from :func:`jaxformer.inspect.layer_cosine_similarity`
    (entry i, j: mean over tokens of cos(resid_i, resid_j); 0 = embedding)."""
    s = np.asarray(sim_LL)
    n = s.shape[0]
    names = ["emb"] + [f"L{i}" for i in range(1, n)]
    fig = _figure(6.2, 5.0)
    ax = fig.add_subplot()
    im = ax.imshow(s, cmap="magma", vmin=min(0.0, float(s.min())), vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(n), names)
    ax.set_yticks(range(n), names)
    if n <= 13:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{s[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if s[i, j] > 0.7 else "white")
    ax.set_xlabel("residual stream after block (emb = before block 1)")
    ax.set_ylabel("residual stream after block")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="mean cosine similarity")
    return save(fig, path)


def residual_norms(resid_LTD, labels: Sequence[str], *, title: str = "norm of each token's residual stream",
                   path=None) -> Figure:
    """``||resid[l, t]||`` as a heatmap (depth x token)."""
    n = np.linalg.norm(np.asarray(resid_LTD, np.float64), axis=-1)
    L, T = n.shape
    fig = _figure(float(np.clip(0.4 * T + 2.5, 5.0, 12.0)), 0.45 * L + 2.2)
    ax = fig.add_subplot()
    im = ax.imshow(n, cmap=CMAP, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(T), labels, rotation=90, fontsize=_label_size(T))
    ax.set_yticks(range(L), ["emb"] + [f"L{i}" for i in range(1, L)])
    ax.set_xlabel("token")
    ax.set_ylabel("depth")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="L2 norm")
    return save(fig, path)


def logit_lens_heatmap(lens_LTV, labels: Sequence[str], decode, *, targets: Optional[Sequence[int]] = None,
                       title: str = "logit lens: top prediction after each block", path=None) -> Figure:
    """Logit lens ``[L+1, T, V]`` (from :func:`jaxformer.inspect.capture`): each cell shows the
    most likely next token read from that depth (``decode(id) -> str``), coloured by its
    probability. With ``targets`` (the true next ids, ``[T]``) correct cells are outlined."""
    x = np.asarray(lens_LTV, np.float64)
    x = x - x.max(-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(-1, keepdims=True)
    top = p.argmax(-1)
    top_p = p.max(-1)
    L, T = top.shape
    fig = _figure(float(np.clip(0.75 * T + 2.5, 6.0, 16.0)), 0.5 * L + 2.4)
    ax = fig.add_subplot()
    im = ax.imshow(top_p, cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for layer in range(L):
        for t in range(T):
            ax.text(t, layer, decode(int(top[layer, t])), ha="center", va="center", fontsize=8,
                    color="white" if top_p[layer, t] > 0.6 else "black")
            if targets is not None and t < len(targets) and top[layer, t] == targets[t]:
                ax.add_patch(_box(t, layer))
    ax.set_xticks(range(T), labels, rotation=90, fontsize=_label_size(T))
    ax.set_yticks(range(L), ["emb"] + [f"L{i}" for i in range(1, L)])
    ax.set_xlabel("input token (prediction is for the token after it)")
    ax.set_ylabel("residual stream after block")
    ax.set_title(title + (" (outlined: equals the true next token)" if targets is not None else ""),
                 fontsize=10)
    fig.colorbar(im, ax=ax, label="probability of the top token")
    return save(fig, path)


def _box(x, y):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="crimson", lw=1.5)


def sampling_comparison(dists: Dict[str, np.ndarray], decode, *, top: int = 12,
                        title: str = "next-token distribution under each sampling setting",
                        path=None) -> Figure:
    """Bar charts of next-token distributions, one panel per setting (``{"T=0.7": probs_V}``),
    over the ``top`` tokens most likely across the settings (same order in every panel).
    Each panel's title counts the tokens with non-zero probability."""
    names = list(dists)
    base = np.sum([np.asarray(dists[k], np.float64) for k in names], axis=0)   # robust to one-hot
    order = np.argsort(-base, kind="stable")[:top]
    ticks = [decode(int(i)) for i in order]
    cols = min(len(names), 3)
    rows = math.ceil(len(names) / cols)
    fig = _figure(4.2 * cols, 3.3 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for k in range(rows * cols):
        ax = axes[k // cols, k % cols]
        if k >= len(names):
            ax.axis("off")
            continue
        p = np.asarray(dists[names[k]])
        ax.bar(range(len(order)), p[order], color="tab:blue")
        ax.set_xticks(range(len(order)), ticks, fontsize=9,
                      rotation=90 if max(map(len, ticks)) > 2 else 0)
        alive = int((p > 0).sum())
        ax.set_title(f"{names[k]}  ({alive} token{'s' if alive != 1 else ''} possible)", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
        if k % cols == 0:
            ax.set_ylabel("probability")
    fig.supxlabel("candidate next token", fontsize=10)
    fig.suptitle(title)
    return save(fig, path)


def matrix_heatmap(m, *, xlabels=None, ylabels=None, title: str = "", xlabel: str = "", ylabel: str = "",
                   cbar_label: str = "value", cmap: str = CMAP, vmin=None, vmax=None,
                   annotate: Optional[bool] = None, fmt: str = "{:.2f}", path=None) -> Figure:
    """Any matrix ``[R, C]`` as a labelled heatmap with a colour bar (values written in the
    cells when it is small, at most 12 x 12, or ``annotate=True``)."""
    m = np.asarray(m, np.float64)
    R, C = m.shape
    fig = _figure(float(np.clip(0.5 * C + 2.8, 5.0, 12.0)), float(np.clip(0.45 * R + 1.8, 3.2, 10.0)))
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    if xlabels is not None:
        ax.set_xticks(range(C), xlabels, rotation=_rotation(xlabels), fontsize=_label_size(C))
    if ylabels is not None:
        ax.set_yticks(range(R), ylabels, fontsize=_label_size(R))
    if annotate or (annotate is None and R <= 12 and C <= 12):
        lo, hi = im.get_clim()
        for r in range(R):
            for c in range(C):
                light = (m[r, c] - lo) / max(hi - lo, 1e-12) > 0.6
                ax.text(c, r, fmt.format(m[r, c]), ha="center", va="center", fontsize=8,
                        color="black" if light else "white")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=cbar_label)
    return save(fig, path)


def line_plot(series: Dict[str, Sequence[float]], *, x=None, xticklabels=None, title: str = "",
              xlabel: str = "", ylabel: str = "", logy: bool = False, path=None) -> Figure:
    """A few named curves ``{"name": ys}`` on one axis (markers, grid, legend)."""
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    for name, ys in series.items():
        xs = range(len(ys)) if x is None else x
        ax.plot(xs, ys, marker="o", ms=3, lw=1.5, label=name)
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)), xticklabels, fontsize=_label_size(len(xticklabels)),
                      rotation=_rotation(xticklabels))
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return save(fig, path)


def bar_chart(values: Dict[str, float], *, title: str = "", xlabel: str = "", logx: bool = False,
              path=None) -> Figure:
    """Named values as horizontal bars (first at the top), each bar labelled with its value."""
    names = list(values)
    v = np.asarray([values[k] for k in names], np.float64)
    fig = _figure(9.0, 0.45 * len(names) + 1.6)
    ax = fig.add_subplot()
    ax.barh(range(len(names)), v, color="tab:green")
    ax.set_yticks(range(len(names)), names, fontsize=9)
    ax.invert_yaxis()
    if logx:
        ax.set_xscale("log")
    for i, x in enumerate(v):
        ax.text(x, i, f" {x:.1e}", va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)
