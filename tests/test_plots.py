"""jaxformer.viz.plots, the HTML explorer and `jaxformer attention`: every figure is a real PNG of
the expected size written without a display; the explorer works in a headless browser."""
import json
import os
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from jaxformer.viz import attention_figures as A
from jaxformer.viz import figure as FIG
from jaxformer.viz import plots as P
from jaxformer.viz import representation_figures as R
from jaxformer.viz.explorer import attention_explorer_html, write_attention_explorer

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


def png_size(path):
    """(width, height) from a PNG header; also checks the signature and that it is non-empty."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert os.path.getsize(path) > 2000, f"{path} is suspiciously small"
    return struct.unpack(">II", head[16:24])


def expected(fig):
    w, h = fig.get_size_inches() * FIG.DPI
    return int(round(w)), int(round(h))


def causal_weights(L=2, H=3, T=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(L, H, T, T)) + np.where(np.tril(np.ones((T, T))), 0, -np.inf)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


LABELS = ["The", "\u2423cat", "\u2423sat", "\u2423on", "\u2423it", "."]


def figures(tmp):
    w = causal_weights()
    pe = np.sin(np.arange(50)[:, None] / 10000 ** (np.arange(16)[None] / 16))
    metrics = ([{"step": s, "train_loss": 4 - s / 100} for s in range(0, 200, 10)]
               + [{"step": s, "val_loss": 4.1 - s / 100} for s in (0, 100, 190)])
    resid = np.random.default_rng(1).normal(size=(3, 6, 8))
    lens = np.random.default_rng(2).normal(size=(3, 6, 10))
    dists = {"T=1": np.full(10, 0.1), "top-k=3": np.r_[np.full(3, 1 / 3), np.zeros(7)]}
    dec = lambda i: f"t{i}"  # noqa: E731
    return {
        "heatmap": lambda p: A.attention_heatmap(w[0, 0], LABELS, path=p),
        "head_grid": lambda p: A.head_grid(w[1], LABELS, layer=1, path=p),
        "layer_head_grid": lambda p: A.layer_head_grid(w, LABELS, path=p),
        "pe_heatmap": lambda p: R.positional_encoding_heatmap(pe, path=p),
        "pe_curves": lambda p: R.positional_curves(pe, path=p),
        "loss": lambda p: P.loss_curves(metrics, path=p),
        "similarity": lambda p: R.layer_similarity(np.corrcoef(resid.reshape(3, -1)), path=p),
        "norms": lambda p: R.residual_norms(resid, LABELS, path=p),
        "logit_lens": lambda p: R.logit_lens_heatmap(lens, LABELS, dec, targets=[1, 2, 3, 4, 5], path=p),
        "sampling": lambda p: P.sampling_comparison(dists, dec, path=p),
    }


@pytest.mark.parametrize("name", list(figures("")))
def test_each_figure_writes_a_png_of_the_expected_size(name, tmp_path):
    path = tmp_path / "sub" / f"{name}.png"
    fig = figures(tmp_path)[name](path)
    assert png_size(path) == expected(fig)
    assert fig.axes and all(ax.get_title() or ax.get_ylabel() or not ax.get_visible() or ax.images
                            or ax.get_label() == "<colorbar>" for ax in fig.axes)
    assert fig._suptitle is not None or any(ax.get_title() for ax in fig.axes)


def test_heatmap_labels_annotations_and_colorbar():
    w = causal_weights()[0, 0]
    fig = A.attention_heatmap(w, LABELS, title="layer 0 head 0")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == LABELS
    assert [t.get_text() for t in ax.get_yticklabels()] == LABELS
    assert ax.get_xlabel().startswith("key") and ax.get_ylabel().startswith("query")
    cells = [t.get_text() for t in ax.texts]
    assert len(cells) == 36 and cells[0] == "1.00" and cells[1] == "0.00"
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "attention weight (0-1)"  # the colour bar
    big = A.attention_heatmap(np.full((20, 20), 0.05), [str(i) for i in range(20)])
    assert not big.axes[0].texts                                              # no numbers when large


def test_loss_curves_from_a_metrics_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(json.dumps(m) for m in [{"step": 1, "train_loss": 3.0}, {"step": 2, "train_loss": 2.5,
                                                                           "val_loss": 2.7}]))
    fig = P.loss_curves(tmp_path)
    lines = {ln.get_label(): ln.get_xydata().tolist() for ln in fig.axes[0].lines}
    assert lines == {"train loss": [[1, 3.0], [2, 2.5]], "val loss": [[2, 2.7]]}


def test_plots_never_touch_pyplot():
    code = ("import sys, numpy as np; from jaxformer.viz import attention_figures; "
            "attention_figures.attention_heatmap(np.eye(3), list('abc')); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ----------------------------------------------------------------------------- HTML explorer
def test_explorer_html_is_self_contained(tmp_path):
    w = causal_weights()
    labels = LABELS[:-1] + ["</script>"]
    text = attention_explorer_html(labels, w, title="demo <b>")
    assert "http://" not in text and "https://" not in text and "src=" not in text
    assert "demo &lt;b&gt;" in text and text.count("</script>") == 2           # the label is escaped
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', text,
                                re.S).group(1).replace("<\\/", "</"))
    assert data["tokens"] == labels
    np.testing.assert_allclose(data["weights"], w, atol=5e-4)
    path = write_attention_explorer(tmp_path / "x" / "e.html", labels, w)
    assert os.path.getsize(path) > 1000
    with pytest.raises(ValueError, match="do not match"):
        attention_explorer_html(labels[:3], w)


def chromium(args, tmp_path, timeout=90):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_explorer_runs_in_headless_chromium(tmp_path):
    w = causal_weights(L=2, H=3, T=6)
    page = write_attention_explorer(tmp_path / "e.html", LABELS, w)
    dom = chromium(["--dump-dom", f"file://{page}"], tmp_path).stdout
    assert 'data-ready="true"' in dom, "the script did not run to the end"
    layer = re.search(r'<select id="layer">(.*?)</select>', dom, re.S).group(1)
    head = re.search(r'<select id="head">(.*?)</select>', dom, re.S).group(1)
    assert layer.count("<option") == 2 and head.count("<option") == 3 + 1   # heads + their mean
    spans = re.findall(r'<span class="tok[^"]*"[^>]*data-w="([0-9.]+)"[^>]*>([^<]*)</span>', dom)
    assert [s for _, s in spans] == LABELS                                    # the tokenizer's split
    # the initial query is the last token, layer 0 head 0: the highlight is its attention row
    np.testing.assert_allclose([float(v) for v, _ in spans], w[0, 0, -1], atol=1e-3)
    assert 'class="tok query"' in dom and "attends to" in dom
    shot = tmp_path / "shot.png"
    chromium([f"--screenshot={shot}", "--window-size=1000,700", f"file://{page}"], tmp_path)
    assert png_size(shot) == (1000, 700)


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from flax import nnx

    from jaxformer import GPT, ModelConfig
    from jaxformer.training.checkpoint import save_checkpoint, save_run_folder
    from jaxformer.config import Config, DataConfig
    from jaxformer.data import ByteTokenizer

    d = tmp_path_factory.mktemp("run")
    cfg = Config(model=ModelConfig(vocab_size=256, d_model=16, n_head=2, n_layer=2, d_ff=32, max_len=32),
                 data=DataConfig(tokenizer="byte"))
    save_run_folder(d, cfg, ByteTokenizer())
    save_checkpoint(d, 7, GPT(cfg.model, rngs=nnx.Rngs(0)).params())
    return d


def test_cli_attention_html_and_png(run_dir, tmp_path, capsys):
    from jaxformer.cli import main

    assert main(["attention", "--run", str(run_dir), "--text", "to be or", "--out", str(tmp_path / "a.html")]) == 0
    text = (tmp_path / "a.html").read_text()
    data = json.loads(re.search(r'id="data">(.*?)</script>', text, re.S).group(1))
    assert data["tokens"] == ["t", "o", "\u2423", "b", "e", "\u2423", "o", "r"]
    assert np.asarray(data["weights"]).shape == (2, 2, 8, 8)
    assert "step 7" in text
    capsys.readouterr()
    for extra, drawn in (([], "all layers and heads (2 x 2)"), (["--layer", "1"], "layer 1, all 2 heads"),
                         (["--layer", "0", "--head", "1"], "layer 0, head 1")):
        out = tmp_path / f"a{len(extra)}.png"
        assert main(["attention", "--run", str(run_dir), "--text", "to be", "--out", str(out), *extra]) == 0
        assert png_size(out)[0] > 300
        assert capsys.readouterr().out == f"wrote {out}: attention of {drawn}, 5 tokens\n"


@pytest.mark.parametrize("args, message", [
    (["--out", "x.txt"], "must end in .html or .png"),
    (["--out", "x.png", "--layer", "5"], "--layer=5 is out of range"),
    (["--out", "x.png", "--text", "x" * 40], "max_len=32"),
    (["--out", "x.png", "--head", "1"], "--head=1 needs --layer"),
])
def test_cli_attention_errors(run_dir, tmp_path, capsys, args, message):
    from jaxformer.cli import main

    base = ["attention", "--run", str(run_dir), "--text", "hi"]
    args = [a if a not in ("x.txt", "x.png") else str(tmp_path / a) for a in args]
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_attention_not_a_run_folder(tmp_path, capsys):
    from jaxformer.cli import main

    assert main(["attention", "--run", str(tmp_path), "--text", "hi", "--out", str(tmp_path / "a.html")]) == 2
    assert "not a run folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- legible text
from jaxformer.viz import text as PT  # noqa: E402

CJK_EMOJI = ["你", "好", "世", "界", "\U0001F642", "ab\U0001F642", "$x$", "\u2423the"]


def drawn(fig, tmp_path, name="f.png"):
    """Save ``fig`` as the library does and return it (tick labels, extents are then final)."""
    FIG.save(fig, tmp_path / name)
    return fig


def visible_labels(ax, which):
    return PT.label_texts(ax, which)


def assert_legible(ax, which, n, numbered=True):
    """At least 7 pt, no two neighbours overlapping, first and last position labelled, and
    not thinned more than needed (at least min(n, 8) labels)."""
    labels = visible_labels(ax, which)
    assert labels, f"no {which} labels"
    assert min(t.get_fontsize() for t in labels) >= PT.MIN_PT
    boxes = sorted((t.get_window_extent() for t in labels), key=lambda b: b.x0 if which == "x" else -b.y1)
    for a, b in zip(boxes, boxes[1:]):
        if which == "x":
            assert a.x1 <= b.x0 + 0.5, f"x labels overlap: {a} {b}"
        else:
            assert a.y0 >= b.y1 - 0.5, f"y labels overlap: {a} {b}"
    locs = list((ax.xaxis if which == "x" else ax.yaxis).get_majorticklocs())
    assert locs[0] == 0 and locs[-1] == n - 1
    assert len(labels) >= min(n, 8)
    if len(labels) < n and numbered:                       # thinned labels carry their position
        assert labels[1].get_text().split(" ")[0] == str(int(locs[1]))


@pytest.mark.parametrize("n", [4, 40, 256])
def test_token_labels_stay_legible_at_any_length(n, tmp_path):
    labels = [f"\u2423tok{i}" for i in range(n)]
    w = causal_weights(L=2, H=2, T=n)
    heat = drawn(A.attention_heatmap(w[0, 0], labels), tmp_path)
    assert_legible(heat.axes[0], "x", n)
    assert_legible(heat.axes[0], "y", n)
    if n == 40:                                            # grows with the tokens: all 40 shown
        assert len(visible_labels(heat.axes[0], "x")) == 40
    bars = drawn(P.token_logprobs(-np.linspace(0.1, 3, n), labels, second=-np.linspace(1, 4, n)), tmp_path)
    assert_legible(bars.axes[0], "x", n)
    line = drawn(P.line_plot({"log p": -np.linspace(0.1, 3, n)}, xticklabels=labels), tmp_path)
    assert_legible(line.axes[0], "x", n)


def test_grid_labels_keys_queries_layers_and_heads(tmp_path):
    T = 40
    labels = [f"t{i}" for i in range(T)]
    fig = drawn(A.layer_head_grid(causal_weights(L=2, H=3, T=T), labels), tmp_path)
    assert fig._supxlabel.get_text().startswith("key") and fig._supylabel.get_text().startswith("query")
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    grid = np.array(axes).reshape(2, 3)
    for ax in grid[-1]:                                    # keys under the bottom row
        assert_legible(ax, "x", T)
    for ax in grid[:, 0]:                                  # queries left of the first column
        assert_legible(ax, "y", T)
    assert not visible_labels(grid[0, 1], "x") and not visible_labels(grid[0, 1], "y")
    assert [ax.get_title() for ax in grid[0]] == ["head 0", "head 1", "head 2"]
    assert [ax.get_ylabel() for ax in grid[:, -1]] == ["layer 0", "layer 1"]
    # without labels the positions label the axes
    fig = drawn(A.layer_head_grid(causal_weights(L=1, H=2, T=T)), tmp_path)
    shown = [t.get_text() for t in visible_labels(fig.axes[0], "y")]
    assert shown[0] == "0" and shown[-1] == str(T - 1) and all(s.isdigit() for s in shown)
    assert_legible(fig.axes[0], "y", T, numbered=False)
    fig = drawn(A.head_grid(causal_weights(L=1, H=5, T=T)[0], labels), tmp_path)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.get_visible() and ax.images]
    assert len(axes) == 5 and fig._supylabel.get_text().startswith("query")
    assert visible_labels(axes[1], "x"), "panel above an empty slot shows its key labels"


def overlaps(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("make", [
    lambda: A.attention_heatmap(causal_weights(T=3)[0, 0], ["the", "cat", "sleeps"], size=4.5,
                                title="'the cat sleeps': attention weights with a causal mask"),
    lambda: A.attention_heatmap(causal_weights(T=40)[0, 0], [str(i) for i in range(40)],
                                title="run step 500: layer 3, head 1 of a model with a long name " * 2),
    lambda: A.layer_head_grid(causal_weights(L=2, H=2, T=8), list("abcdefgh"), title="x" * 150),
    lambda: P.matrix_heatmap(np.eye(5), xlabels=list("abcde"), title="a long title " * 8, cbar_label="v (1)"),
])
def test_titles_clear_of_colour_bars_and_inside_the_figure(make, tmp_path):
    fig = drawn(make(), tmp_path)
    figbox = fig.bbox
    titles = [fig._suptitle] + [ax.title for ax in fig.axes if ax.get_title()]
    bars = [ax.get_window_extent() for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert bars and fig._suptitle is not None
    for t in titles:
        box = t.get_window_extent()
        assert box.x0 >= figbox.x0 - 1 and box.x1 <= figbox.x1 + 1 and box.y1 <= figbox.y1 + 1, "title cut off"
        assert not any(overlaps(box, b) for b in bars), f"title {t.get_text()!r} overlaps a colour bar"


def glyph_warnings(record):
    return [str(w.message) for w in record if "missing from font" in str(w.message)]


def draw_cjk_everything(tmp_path):
    w = causal_weights(L=1, H=2, T=len(CJK_EMOJI))
    figs = [A.attention_heatmap(w[0, 0], CJK_EMOJI, title="\u4e2d\u6587 \U0001F642 prompt"),
            A.layer_head_grid(w, CJK_EMOJI, title="\u4f60\u597d: every layer x head"),
            P.token_logprobs(-np.arange(len(CJK_EMOJI)) / 3, CJK_EMOJI, title="\U0001F642"),
            P.sampling_comparison({"T=1": np.full(8, 1 / 8)}, lambda i: CJK_EMOJI[i]),
            R.logit_lens_heatmap(np.random.default_rng(0).normal(size=(2, 8, 8)), CJK_EMOJI,
                                 lambda i: CJK_EMOJI[i])]
    for k, fig in enumerate(figs):
        drawn(fig, tmp_path, f"cjk{k}.png")
    return figs


def test_cjk_and_emoji_without_a_font_are_escaped_and_never_warn(tmp_path, monkeypatch):
    monkeypatch.setattr(PT, "FALLBACK_FONTS", ())          # a bare machine: DejaVu Sans only
    import warnings
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        heat = draw_cjk_everything(tmp_path)[0]
    assert not glyph_warnings(record)
    shown = [t.get_text() for t in heat.axes[0].get_yticklabels()]
    assert shown[:5] == ["<U+4F60>", "<U+597D>", "<U+4E16>", "<U+754C>", "<U+1F642>"]
    assert shown[5:] == ["ab<U+1F642>", r"\$x\$", "\u2423the"]     # $ kept literal, ␣ drawn
    assert heat._suptitle.get_text() == "<U+4E2D><U+6587> <U+1F642> prompt"


def cjk_font_installed():
    return "\u4f60" == PT.displayable("\u4f60")


@pytest.mark.skipif(not cjk_font_installed(), reason="no CJK font installed (e.g. Debian fonts-noto-cjk)")
def test_cjk_drawn_with_an_installed_font(tmp_path):
    import warnings
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        heat = draw_cjk_everything(tmp_path)[0]
    assert not glyph_warnings(record)
    assert [t.get_text() for t in heat.axes[0].get_yticklabels()][:4] == list("你好世界")


def test_displayable_and_thinning_rules():
    assert PT.displayable("abc \u2423\u21b5") == "abc \u2423\u21b5"
    assert PT.displayable("x\U0010FFFDy", ["DejaVu Sans"]) == "x<U+10FFFD>y"
    for n, k in [(1, 3), (2, 5), (10, 3), (11, 3), (256, 7), (40, 1)]:
        ticks = PT.thinned_positions(n, k)
        assert ticks[0] == 0 and (ticks[-1] == n - 1 or n - 1 < k)
        assert all(b - a >= k for a, b in zip(ticks, ticks[1:])) and ticks == sorted(set(ticks))


def head_stats():
    from jaxformer.interp.heads import head_statistics

    return head_statistics(causal_weights(L=2, H=3, T=10))


def test_head_summary_one_quantity_per_colour_bar(tmp_path):
    from jaxformer.interp.heads import describe_heads

    stats = head_stats()
    fig = drawn(A.head_summary(stats), tmp_path)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    names = [ax.get_xlabel().replace("\n", " ") for ax in bars]
    assert len(names) == 4 and len(set(names)) == 4 and all("(" in s for s in names), names
    assert "attention weight (0-1)" in names[0] and names[1] == "entropy (nats)"
    panels = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    ent_cells = [float(t.get_text()) for t in panels[1].texts]
    np.testing.assert_allclose(ent_cells, stats["entropy"].reshape(-1), atol=0.006)
    # the number describe_heads prints is the one the entropy panel shows
    printed = float(describe_heads(stats)[0][1].split("entropy ")[1].split(",")[0])
    assert printed == pytest.approx(ent_cells[1], abs=0.006)
    assert panels[0].images[0].get_clim() == (0.0, 1.0) and panels[2].images[0].get_clim() == (0.0, 1.0)


def test_cli_attention_notes_characters_drawn_as_codes(capsys, monkeypatch):
    from jaxformer.cli.commands.attention import _note_missing_glyphs

    monkeypatch.setattr(PT, "FALLBACK_FONTS", ())          # as on a machine without CJK fonts
    _note_missing_glyphs(["你", "好", "␣a", "ab🙂", "你"])
    err = capsys.readouterr().err
    assert "3 character(s)" in err and "fonts-noto-cjk" in err and err.count("\n") == 1
    _note_missing_glyphs(["␣the", "<e4>", "↵"])                     # all drawable: silent
    assert capsys.readouterr().err == ""
