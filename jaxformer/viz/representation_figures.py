"""Figures of what the model represents: the positional-encoding table, the residual stream
across depth (norms, similarity between depths) and the logit lens.

Every function returns a :func:`jaxformer.viz.figure.figure_class` figure (shown inline in a
notebook) and, given ``path``, writes it as a PNG of ``figsize * dpi`` pixels. Heatmaps take
``cmap=`` and, where numbers fit in the cells, ``annotate=``; each colour bar names one
quantity, and a range it states is the colour bar's true range.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from jaxformer.viz.figure import (CMAP, annotate_cells, depth_names, figure_title, new_figure, save, span,
                                  with_fonts)
from jaxformer.viz.text import MIN_PT, displayable, token_axis

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["positional_encoding_heatmap", "positional_curves", "layer_similarity", "residual_norms",
           "logit_lens_heatmap"]


@with_fonts
def positional_encoding_heatmap(pe_PD, *, title: str = "sinusoidal positional encoding",
                                cmap: str = "RdBu_r", path=None) -> Figure:
    """The table ``[P, D]``: position down the rows, dimension along the columns, on the
    fixed -1 to 1 scale of sines and cosines."""
    pe = np.asarray(pe_PD)
    fig = new_figure(8.0, 5.0)
    ax = fig.add_subplot()
    im = ax.imshow(pe, cmap=cmap, vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xlabel("embedding dimension")
    ax.set_ylabel("position")
    figure_title(fig, title)
    fig.colorbar(im, ax=ax, label="encoding value (-1 to 1)")
    return save(fig, path)


@with_fonts
def positional_curves(pe_PD, dims: Sequence[int] = (0, 1, 10, 20, 30), *,
                      title: str = "a few dimensions of the positional encoding", path=None) -> Figure:
    """Selected dimensions of ``pe [P, D]`` as curves over position (low dimensions turn fast,
    high ones slowly)."""
    pe = np.asarray(pe_PD)
    fig = new_figure(9.0, 4.0)
    ax = fig.add_subplot()
    for d in dims:
        if d < pe.shape[1]:
            ax.plot(pe[:, d], label=f"dim {d} ({'sin' if d % 2 == 0 else 'cos'})", lw=1.5)
    ax.set_xlabel("position")
    ax.set_ylabel("encoding value")
    figure_title(fig, title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    return save(fig, path)


@with_fonts
def layer_similarity(sim_LL, *, title: str = "cosine similarity of token representations across depth",
                     annotate: Optional[bool] = None, cmap: str = "magma", path=None) -> Figure:
    """An ``[L+1, L+1]`` matrix from :func:`jaxformer.interp.activations.layer_cosine_similarity`
    (entry i, j: mean over tokens of cos(resid_i, resid_j); 0 = embedding). The colour scale
    runs from 0 (or the smallest entry, when one is negative) to 1, and the colour bar's label
    states that range; values are written in the cells up to 13 depths (``annotate``)."""
    s = np.asarray(sim_LL, np.float64)
    n = s.shape[0]
    lo = min(0.0, float(s.min()))
    side = span(n, 0.35, 2.4, 4.2, 12.0)
    fig = new_figure(side + 1.4, side + 0.2)
    ax = fig.add_subplot()
    im = ax.imshow(s, cmap=cmap, vmin=lo, vmax=1.0, interpolation="nearest")
    token_axis(ax, depth_names(n), "x", fontsize=9)
    token_axis(ax, depth_names(n), "y", fontsize=9)
    if annotate or (annotate is None and n <= 13):
        annotate_cells(ax, s, im, fontsize=7.5)
    ax.set_xlabel("residual stream after block (emb = before block 1)")
    ax.set_ylabel("residual stream after block")
    figure_title(fig, title, 11)
    fig.colorbar(im, ax=ax, label=f"mean cosine similarity ({lo:.3g} to 1)")
    return save(fig, path)


@with_fonts
def residual_norms(resid_LTD, labels: Sequence[str], *, title: str = "norm of each token's residual stream",
                   annotate: bool = False, cmap: str = CMAP, path=None) -> Figure:
    """``||resid[l, t]||`` as a heatmap (depth x token), the colours spanning the norms;
    ``annotate=True`` writes each norm in its cell."""
    n = np.linalg.norm(np.asarray(resid_LTD, np.float64), axis=-1)
    L, T = n.shape
    fig = new_figure(span(T, 0.16 if not annotate else 0.45, 3.0, 5.0, 14.0), span(L, 0.3, 2.8, 3.5, 9.0))
    ax = fig.add_subplot()
    im = ax.imshow(n, cmap=cmap, aspect="auto", interpolation="nearest")
    token_axis(ax, labels, "x", n=T)
    token_axis(ax, depth_names(L), "y", fontsize=9)
    if annotate:
        annotate_cells(ax, n, im, "{:.1f}", fontsize=7)
    ax.set_xlabel("token")
    ax.set_ylabel("depth")
    figure_title(fig, title)
    fig.colorbar(im, ax=ax, label="L2 norm of the residual vector")
    return save(fig, path)


def _box(x, y):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="crimson", lw=1.5)


def _softmax_top(lens_LTV):
    """``(top id [L, T], its probability [L, T])`` of each row of logits ``[L, T, V]``."""
    x = np.asarray(lens_LTV, np.float64)
    x = x - x.max(-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(-1, keepdims=True)
    return p.argmax(-1), p.max(-1)


@with_fonts
def logit_lens_heatmap(lens_LTV, labels: Sequence[str], decode, *, targets: Optional[Sequence[int]] = None,
                       title: str = "logit lens: top prediction after each block", cmap: str = "Blues",
                       path=None) -> Figure:
    """Logit lens ``[L+1, T, V]`` (from :func:`jaxformer.interp.activations.capture`): each cell shows the
    most likely next token read from that depth (``decode(id) -> str``; written in the cells
    while they are wide enough, up to 40 tokens), coloured by its probability (0-1, ``cmap``).
    With ``targets`` (the true next ids, ``[T]``) correct cells are outlined."""
    top, top_p = _softmax_top(lens_LTV)
    L, T = top.shape
    fig = new_figure(span(T, 0.5, 2.5, 6.0, 16.0), span(L, 0.4, 2.9, 3.5, 10.0))
    ax = fig.add_subplot()
    im = ax.imshow(top_p, cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for layer in range(L):
        for t in range(T):
            if T <= 40:
                word = displayable(str(decode(int(top[layer, t]))))[:6].replace("$", r"\$")
                ax.text(t, layer, word, ha="center", va="center", fontsize=MIN_PT if T > 20 else 8,
                        color="white" if top_p[layer, t] > 0.6 else "black")
            if targets is not None and t < len(targets) and top[layer, t] == targets[t]:
                ax.add_patch(_box(t, layer))
    token_axis(ax, labels, "x", n=T)
    token_axis(ax, depth_names(L), "y", fontsize=9)
    ax.set_xlabel("input token (prediction is for the token after it)")
    ax.set_ylabel("residual stream after block")
    figure_title(fig, title + (" (outlined: equals the true next token)" if targets is not None else ""), 11)
    fig.colorbar(im, ax=ax, label="probability of the top token (0-1)")
    return save(fig, path)
