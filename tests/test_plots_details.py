"""Figure details (issue 30): figures display inline in a notebook without pyplot, heatmaps
take ``annotate=`` and ``cmap=``, names on bars are never cut, and a colour bar that states a
range states its true range."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from jaxformer.viz import attention_figures as A
from jaxformer.viz import figure as FIG
from jaxformer.viz import plots as P
from jaxformer.viz import representation_figures as R

LABELS = ["The", "\u2423cat", "\u2423sat", "\u2423on"]


def weights(H=2, T=4, seed=0):
    x = np.random.default_rng(seed).normal(size=(H, T, T)) + np.where(np.tril(np.ones((T, T))), 0, -np.inf)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_figures_display_inline_without_pyplot():
    """In a fresh interpreter: the figure is a matplotlib Figure, IPython's display formatter
    gives it an image/png (what a notebook shows), and pyplot was never imported."""
    pytest.importorskip("IPython")
    code = ("import sys, numpy as np\n"
            "from matplotlib.figure import Figure\n"
            "from IPython.core.interactiveshell import InteractiveShell\n"
            "from jaxformer.viz import attention_figures\n"
            "fig = attention_figures.attention_heatmap(np.eye(3), list('abc'))\n"
            "assert isinstance(fig, Figure)\n"
            "data, _ = InteractiveShell.instance().display_formatter.format(fig)\n"
            "png = data['image/png']\n"
            "assert (png if isinstance(png, bytes) else __import__('base64').b64decode(png))[:4] == b'\\x89PNG'\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_repr_png_is_the_saved_png(tmp_path):
    fig = P.line_plot({"a": [1, 2, 3]}, title="t")
    png = fig._repr_png_()
    FIG.save(fig, tmp_path / "f.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == (tmp_path / "f.png").read_bytes()


def test_head_grid_annotates_and_takes_a_colour_map():
    w = weights()
    fig = A.head_grid(w, LABELS, annotate=True, cmap="Blues")
    panels = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(panels) == 2
    for ax, w_TT in zip(panels, w):
        assert ax.images[0].get_cmap().name == "Blues"
        assert [t.get_text() for t in ax.texts] == [f"{v:.2f}" for v in w_TT.reshape(-1)]
    assert not any(ax.texts for ax in A.head_grid(w, LABELS).axes)          # off by default


@pytest.mark.parametrize("make", [
    lambda a, c: A.attention_heatmap(weights()[0], LABELS, annotate=a, cmap=c),
    lambda a, c: A.head_grid(weights(), LABELS, annotate=a, cmap=c),
    lambda a, c: A.layer_head_grid(np.stack([weights(), weights(seed=1)]), LABELS, annotate=a, cmap=c),
    lambda a, c: R.layer_similarity(np.eye(3), annotate=a, cmap=c),
    lambda a, c: R.residual_norms(np.ones((3, 4, 8)), LABELS, annotate=a, cmap=c),
    lambda a, c: P.matrix_heatmap(np.eye(3), annotate=a, cmap=c),
    lambda a, c: P.patching_heatmap(np.eye(3), annotate=a, cmap=c),
    lambda a, c: P.head_detector_scores({"induction": np.eye(2)}, annotate=a, cmap=c),
])
def test_heatmaps_take_annotate_and_cmap(make):
    on, off = make(True, "Blues"), make(False, "Greens")
    images = [im for ax in on.axes for im in ax.images]
    assert images and all(im.get_cmap().name == "Blues" for im in images)
    assert all(im.get_cmap().name == "Greens" for ax in off.axes for im in ax.images)
    assert sum(len(ax.texts) for ax in on.axes) == sum(im.get_array().size for im in images)
    assert not any(ax.texts for ax in off.axes)


LONG = {"flax nnx.MultiHeadAttention (same weights, causal mask)": 3e-7,
        "torch.nn.functional.scaled_dot_product_attention with is_causal=True": 1e-6,
        "numpy float64 reference written out by hand": 2e-8, "x": 1e-9}


@pytest.mark.parametrize("make", [
    lambda: P.bar_chart(LONG, logx=True, title="the library against reference implementations"),
    lambda: P.logit_attribution(list(LONG), list(LONG.values())),
])
def test_bar_names_are_never_cut_and_fit_in_the_figure(make, tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = FIG.save(make(), tmp_path / "bars.png")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()                                   # the layout of the saved PNG
    renderer = canvas.get_renderer()
    box = fig.bbox
    ax = fig.axes[0]
    shown = [t for t in ax.get_yticklabels() if t.get_text()]
    # whole names (wrapped at spaces, a word longer than a line broken in it)
    assert ["".join(t.get_text().split()) for t in shown] == ["".join(k.split()) for k in LONG]
    for t in shown:
        e = t.get_window_extent(renderer)
        assert e.x0 >= box.x0 - 0.5 and e.x1 <= box.x1 + 0.5 and e.y0 >= box.y0 - 0.5 and e.y1 <= box.y1 + 0.5, \
            f"{t.get_text()!r} sticks out of the figure: {e} vs {box}"
    boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: -b.y1)
    assert all(a.y0 >= b.y1 - 0.5 for a, b in zip(boxes, boxes[1:])), "names overlap"


RANGE = re.compile(r"\((-?[0-9.]+(?:e-?\d+)?)\s*(?:to|-)\s*(-?[0-9.]+)\)")


def colour_bars(fig):
    """``(label, (vmin, vmax))`` of every colour bar of ``fig``."""
    out = []
    for ax in fig.axes:
        for im in ax.images:
            cb = im.colorbar
            if cb is not None:
                out.append((cb.ax.get_ylabel() or cb.ax.get_xlabel(), im.get_clim()))
    return out


@pytest.mark.parametrize("make", [
    lambda: R.layer_similarity(np.array([[1.0, 0.4], [0.4, 1.0]])),
    lambda: R.layer_similarity(np.array([[1.0, -0.3], [-0.3, 1.0]])),
    lambda: A.attention_heatmap(weights()[0], LABELS),
    lambda: A.head_grid(weights(), LABELS),
    lambda: R.positional_encoding_heatmap(np.sin(np.arange(20)[:, None] * np.ones((1, 8)))),
    lambda: R.logit_lens_heatmap(np.zeros((2, 3, 5)), ["a", "b", "c"], str),
    lambda: P.head_detector_scores({"induction": np.eye(2) * 0.5}),
    lambda: A.head_summary({k: np.full((1, 2), 0.5) for k in
                            ("prev", "first", "self", "entropy", "norm_entropy", "mean_offset")}),
])
def test_colour_bars_state_their_true_range(make):
    """A colour bar whose label states a range ``(a to b)`` / ``(a-b)`` has exactly those
    limits (experiment 03's similarity said -1 to 1 on a 0-1 scale)."""
    bars = colour_bars(make())
    assert bars
    for label, (lo, hi) in bars:
        m = RANGE.search(label)
        if m:
            assert (float(m.group(1)), float(m.group(2))) == pytest.approx((lo, hi)), label


def test_layer_similarity_range_follows_the_data():
    pos = colour_bars(R.layer_similarity(np.array([[1.0, 0.4], [0.4, 1.0]])))[0]
    assert pos[1] == (0.0, 1.0) and "(0 to 1)" in pos[0]
    neg = colour_bars(R.layer_similarity(np.array([[1.0, -0.3], [-0.3, 1.0]])))[0]
    assert neg[1] == pytest.approx((-0.3, 1.0)) and "(-0.3 to 1)" in neg[0]
