"""The HTML explorer and the widget's view in a real browser (headless Chromium; skipped where
none is installed, as on CI): both label both axes of the map with the tokens, and the widget
view draws what its model state says and writes the text, layer and head back to it."""
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from jaxformer.viz.explorer import write_attention_explorer

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
LABELS = ["The", "\u2423cat", "\u2423sat", "\u2423on", "\u2423it", "."]


def causal_weights(L=2, H=3, T=6, seed=0):
    x = np.random.default_rng(seed).normal(size=(L, H, T, T)) + np.where(np.tril(np.ones((T, T))), 0, -np.inf)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def dump_dom(page, tmp_path) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000"]
    return subprocess.run([CHROMIUM, *flags, "--dump-dom", f"file://{page}"], capture_output=True,
                          text=True, timeout=90).stdout


def axis_labels(dom, cls):
    return [html.unescape(s) for s in re.findall(rf'<span class="{cls}"[^>]*>([^<]*)</span>', dom)]


def test_explorer_labels_both_axes_with_tokens(tmp_path):
    page = write_attention_explorer(tmp_path / "e.html", LABELS, causal_weights())
    dom = dump_dom(page, tmp_path)
    assert 'data-ready="true"' in dom
    assert axis_labels(dom, "xlab") == LABELS and axis_labels(dom, "ylab") == LABELS


def test_explorer_thins_labels_of_a_long_text(tmp_path):
    labels = [f"t{i}" for i in range(200)]
    page = write_attention_explorer(tmp_path / "e.html", labels, causal_weights(L=1, H=1, T=200))
    shown = axis_labels(dump_dom(page, tmp_path), "xlab")
    assert 10 <= len(shown) < 200 and shown[0] == "0 t0" and shown[-1] == "199 t199"


def widget_page(tmp_path, state) -> str:
    """An HTML page that runs the widget's ES module against a stand-in for the Jupyter widget
    model (get / set / on / save_changes), then records what the view wrote back."""
    from jaxformer.viz.widget import _CSS, _ESM

    esm = _ESM.replace("export default { render };", "")
    page = tmp_path / "w.html"
    page.write_text(f"""<!DOCTYPE html><html><head><meta charset="utf-8"><style>{_CSS}</style></head>
<body><div id="w"></div><pre id="log"></pre><script type="module">
{esm}
const state = {json.dumps(state)}, handlers = {{}}, saved = [];
const model = {{ get: (k) => state[k], set: (k, v) => {{ state[k] = v; (handlers['change:' + k] || []).forEach((f) => f()); }},
  on: (e, f) => {{ (handlers[e] = handlers[e] || []).push(f); }}, save_changes: () => saved.push({{...state, weights: null}}) }};
const el = document.getElementById('w');
render({{ model, el }});
const head = el.querySelector('.jf-head'); head.value = '1'; head.dispatchEvent(new Event('change'));
document.getElementById('log').textContent = JSON.stringify(saved.map((s) => [s.layer, s.head]));
document.body.dataset.ready = 'true';
</script></body></html>""", encoding="utf-8")
    return str(page)


def test_widget_view_in_chromium(tmp_path):
    pytest.importorskip("anywidget")
    w = causal_weights()
    state = {"text": "The cat sat on it.", "tokens": LABELS, "weights": w.round(4).tolist(),
             "layer": 1, "head": 0, "error": ""}
    dom = dump_dom(widget_page(tmp_path, state), tmp_path)
    assert 'data-ready="true"' in dom, dom[-2000:]
    assert axis_labels(dom, "xlab") == LABELS and axis_labels(dom, "ylab") == LABELS
    layer = re.search(r'<select class="jf-layer">(.*?)</select>', dom, re.S).group(1)
    head = re.search(r'<select class="jf-head">(.*?)</select>', dom, re.S).group(1)
    assert layer.count("<option") == 2 and head.count("<option") == 3
    assert json.loads(re.search(r'<pre id="log">(.*?)</pre>', dom).group(1)) == [[1, 1]]   # head 1 sent back
