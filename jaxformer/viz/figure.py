"""What every figure of :mod:`jaxformer.viz` shares: the figure class, saving, fonts, titles,
sizes and cell annotations.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas), never ``pyplot``, so no
display and no global state. They are instances of :func:`figure_class`, a ``Figure`` with a
``_repr_png_``: a notebook shows a returned figure as an image in a fresh kernel, with no
``%matplotlib inline`` and no pyplot import. matplotlib is imported when a figure is drawn,
not with this module (``import jaxformer`` loads no matplotlib).
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
from typing import TYPE_CHECKING, Optional

import numpy as np

from jaxformer.viz.text import displayable, font_chain, make_displayable, wrap_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["DPI", "CMAP", "WEIGHT_LABEL", "TITLE_PT", "figure_class", "new_figure", "save", "with_fonts",
           "figure_title", "span", "annotate_cells", "depth_names"]

DPI = 100
CMAP = "viridis"
WEIGHT_LABEL = "attention weight (0-1)"
TITLE_PT = 12.0


@functools.lru_cache(maxsize=1)
def figure_class() -> type:
    """The class of every figure :mod:`jaxformer.viz` returns: a matplotlib ``Figure`` (so
    ``savefig``, ``axes`` and every other use work unchanged) that IPython displays as a PNG
    of ``figsize * DPI`` pixels (``_repr_png_``). Defined on first use, so that importing
    this module does not import matplotlib."""
    from matplotlib.figure import Figure as MplFigure

    class Figure(MplFigure):
        """A matplotlib Figure that Jupyter shows inline as a PNG without pyplot."""

        def _repr_png_(self) -> bytes:
            make_displayable(self)
            buf = io.BytesIO()
            self.savefig(buf, dpi=DPI, format="png")
            return buf.getvalue()

    return Figure


def new_figure(width: float, height: float) -> Figure:
    """An empty :func:`figure_class` figure of ``width x height`` inches, constrained layout."""
    return figure_class()(figsize=(width, height), dpi=DPI, layout="constrained")


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


def with_fonts(fn):
    """Build the figure with the fallback font chain as the default family, so every text
    (and every tick made later) can draw CJK and emoji when such a font is installed."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"font.family": list(font_chain())}):
            return fn(*args, **kwargs)
    return wrapper


def span(n: int, per: float, extra: float, lo: float, hi: float) -> float:
    """A figure side in inches that grows with ``n`` items up to a cap."""
    return float(np.clip(per * n + extra, lo, hi))


def figure_title(fig: Figure, text: Optional[str], fontsize: float = TITLE_PT):
    """The figure's title above every axes and colour bar (a suptitle, so the constrained
    layout reserves room for it), wrapped to the figure's width."""
    if not text:
        return None
    width_pt = 0.94 * fig.get_figwidth() * 72
    return fig.suptitle(wrap_text(displayable(text), width_pt, fontsize), fontsize=fontsize)


def annotate_cells(ax, m, im, fmt: str = "{:.2f}", fontsize: float = 8) -> None:
    """Write each value of ``m [R, C]`` in its cell of the image ``im`` on ``ax``, black on
    light colours and white on dark ones (read from ``im``'s colour map and limits)."""
    lo, hi = im.get_clim()
    cmap = im.get_cmap()
    for r in range(m.shape[0]):
        for c in range(m.shape[1]):
            rgb = cmap(float(np.clip((m[r, c] - lo) / max(hi - lo, 1e-12), 0, 1)))[:3]
            light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 0.55
            ax.text(c, r, fmt.format(m[r, c]), ha="center", va="center", fontsize=fontsize,
                    color="black" if light else "white")


def depth_names(n: int) -> list:
    """Names of ``n`` residual-stream depths: ``emb`` (before block 1), ``L1``, ``L2``, ..."""
    return ["emb"] + [f"L{i}" for i in range(1, n)]
