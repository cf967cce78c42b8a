"""A self-contained interactive HTML attention explorer: one file, inline CSS and JavaScript,
no server and no network.

Pick a layer and a head (or the mean over heads), hover a token to see where it attends:
the attended-to tokens light up in proportion to their weight, the whole ``[T, T]`` matrix
of the head is drawn beside them, and the strongest keys are listed with their weights.
Tokens are shown exactly as the tokenizer split the text (spaces as ``␣``).
"""
from __future__ import annotations

import html
import json
import os
from typing import Sequence

import numpy as np

__all__ = ["attention_explorer_html", "write_attention_explorer", "MATRIX_JS", "MATRIX_CSS"]

#: CSS of :data:`MATRIX_JS`'s labelled matrix (shared with :mod:`jaxformer.viz.widget`).
MATRIX_CSS = """
.jf-matrix{position:relative;font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:11px;color:#333}
.jf-matrix canvas{position:absolute;border:1px solid #ccc;background:#fff;image-rendering:pixelated}
.jf-matrix .xlab,.jf-matrix .ylab{position:absolute;white-space:pre;line-height:1}
.jf-matrix .xlab{writing-mode:vertical-rl;transform:translateX(-50%) rotate(180deg)}
.jf-matrix .ylab{transform:translateY(-50%);text-align:right}
.jf-matrix .axis{position:absolute;font-family:system-ui,sans-serif;font-size:11px;color:#666}
"""

#: One JavaScript function, ``labelledMatrix(box, tokens, m, opts)``: draws the ``[T, T]``
#: matrix ``m`` in the element ``box`` on a canvas with the key tokens above it and the query
#: tokens left of it (every k-th token when they would overlap, with its position), and calls
#: ``opts.onHover(t, s, w)`` for the cell under the pointer. ``opts.color(w)`` colours a cell,
#: ``opts.query`` outlines a row. Used by the explorer and the Jupyter widget.
MATRIX_JS = r"""
function labelledMatrix(box, tokens, m, opts) {
  const T = tokens.length, cell = Math.max(3, Math.min(28, Math.floor(420 / T)));
  const step = Math.max(1, Math.ceil(13 / cell));
  const shown = tokens.map((s, i) => {
    const cut = s.length > 14 ? s.slice(0, 13) + '\u2026' : s;
    return step > 1 ? i + ' ' + cut : cut;
  });
  const keep = (i) => i % step === 0 || i === T - 1;
  const longest = Math.max(1, ...shown.filter((s, i) => keep(i)).map((s) => s.length));
  const pad = Math.min(130, Math.max(58, 22 + 7 * longest)), side = cell * T;
  box.innerHTML = '';
  box.classList.add('jf-matrix');
  box.style.width = (pad + side + 2) + 'px'; box.style.height = (pad + side + 2) + 'px';
  const add = (cls, text, css) => {
    const e = document.createElement('span'); e.className = cls; e.textContent = text;
    e.style.cssText = css; box.appendChild(e); return e;
  };
  add('axis', 'key \u2192', 'left:' + pad + 'px;top:0');
  add('axis', 'query \u2193', 'left:0;top:' + (pad - 14) + 'px');
  for (let i = 0; i < T; i++) {
    if (!keep(i)) continue;
    const mid = pad + i * cell + cell / 2;
    add('xlab', shown[i], 'left:' + mid + 'px;bottom:' + (side + 6) + 'px').dataset.i = i;
    add('ylab', shown[i], 'top:' + mid + 'px;right:' + (side + 6) + 'px').dataset.i = i;
  }
  const c = document.createElement('canvas');
  c.width = c.height = side; c.style.left = pad + 'px'; c.style.top = pad + 'px';
  box.appendChild(c);
  const ctx = c.getContext('2d');
  ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, side, side);
  for (let t = 0; t < T; t++) for (let s = 0; s < T; s++) {
    if (m[t][s] <= 0) continue;
    ctx.fillStyle = opts.color(m[t][s]); ctx.fillRect(s * cell, t * cell, cell, cell);
  }
  if (opts.query !== undefined && opts.query !== null) {
    ctx.strokeStyle = '#d62728'; ctx.lineWidth = 2;
    ctx.strokeRect(1, opts.query * cell + 1, side - 2, cell - 2);
  }
  c.addEventListener('mousemove', (e) => {
    const r = c.getBoundingClientRect();
    const t = Math.floor((e.clientY - r.top) / cell), s = Math.floor((e.clientX - r.left) / cell);
    if (t >= 0 && t < T && s >= 0 && s < T && opts.onHover) opts.onHover(t, s, m[t][s]);
  });
  return c;
}
"""

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}
.sub{color:#666;font-size:13px;margin-bottom:14px}
.controls{display:flex;gap:18px;align-items:center;margin-bottom:14px;font-size:14px}
select{font-size:14px;padding:2px 6px}
#tokens{line-height:2.3;font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:16px;
  background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 12px;max-width:1100px}
.tok{padding:3px 2px;margin:0 1px;border-radius:3px;cursor:pointer;white-space:pre;border:1px solid #eee}
.tok.query{outline:2px solid #d62728;outline-offset:1px}
.row{display:flex;gap:24px;margin-top:16px;align-items:flex-start;flex-wrap:wrap}
#info{font-size:14px;min-width:280px;max-width:420px}
#info table{border-collapse:collapse;margin-top:6px}
#info td{padding:2px 8px;border-bottom:1px solid #eee;font-family:monospace}
.bar{display:inline-block;height:10px;background:#ff7f0e;vertical-align:middle}
.legend{font-size:12px;color:#666;margin-top:4px}
"""

_JS = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const L = D.weights.length, H = D.weights[0].length, T = D.tokens.length;
const layerSel = document.getElementById('layer'), headSel = document.getElementById('head');
for (let l = 0; l < L; l++) layerSel.add(new Option('layer ' + l, l));
headSel.add(new Option('mean of heads', -1));
for (let h = 0; h < H; h++) headSel.add(new Option('head ' + h, h));
headSel.value = 0;
const box = document.getElementById('tokens');
const spans = D.tokens.map((t, i) => {
  const s = document.createElement('span');
  s.className = 'tok'; s.textContent = t; s.dataset.i = i;
  s.title = 'position ' + i;
  s.addEventListener('mouseenter', () => { if (!pinned) setQuery(i); });
  s.addEventListener('click', () => { pinned = (pinned && query === i) ? false : true; setQuery(i); });
  box.appendChild(s);
  return s;
});
let query = T - 1, pinned = false;
function matrix() {
  const l = +layerSel.value, h = +headSel.value;
  if (h >= 0) return D.weights[l][h];
  const m = [];
  for (let t = 0; t < T; t++) {
    const row = new Array(T).fill(0);
    for (let k = 0; k < H; k++) for (let s = 0; s < T; s++) row[s] += D.weights[l][k][t][s] / H;
    m.push(row);
  }
  return m;
}
function color(w) { return 'rgba(255,127,14,' + Math.min(1, Math.max(0, w)).toFixed(3) + ')'; }
function esc(s) { return s.replace(/&/g, '&amp;').replace(/</g, '&lt;'); }
function setQuery(i) {
  query = i;
  const row = matrix()[i];
  spans.forEach((s, j) => {
    s.style.background = color(row[j]);
    s.classList.toggle('query', j === i);
    s.dataset.w = row[j].toFixed(3);
  });
  const order = row.map((w, j) => [w, j]).sort((a, b) => b[0] - a[0]).slice(0, 6);
  const name = headSel.value < 0 ? 'mean of heads' : 'head ' + headSel.value;
  let h = '<b>' + esc(D.tokens[i]) + '</b> (position ' + i + ') attends to, in layer ' +
          layerSel.value + ', ' + name + (pinned ? ' [pinned: click to release]' : '') + ':<table>';
  for (const [w, j] of order) {
    if (w <= 0) continue;
    h += '<tr><td>' + j + '</td><td>' + esc(D.tokens[j]) + '</td><td>' + w.toFixed(3) +
         '</td><td><span class="bar" style="width:' + Math.round(120 * w) + 'px"></span></td></tr>';
  }
  document.getElementById('info').innerHTML = h + '</table>';
  draw();
}
function draw() {
  labelledMatrix(document.getElementById('matrix'), D.tokens, matrix(), {
    color: color, query: query,
    onHover: (t, s, w) => {
      document.getElementById('cell').textContent = 'query ' + t + ' ' + D.tokens[t] + ' -> key ' +
        s + ' ' + D.tokens[s] + ': ' + w.toFixed(3);
    }});
}
layerSel.addEventListener('change', () => setQuery(query));
headSel.addEventListener('change', () => setQuery(query));
setQuery(query);
document.body.dataset.ready = 'true';
"""


def attention_explorer_html(labels: Sequence[str], weights_LHTT, *, title: str = "attention explorer",
                            subtitle: str = "", decimals: int = 3) -> str:
    """The explorer as one HTML string. ``labels``: one display string per token (see
    :func:`jaxformer.viz.text.token_labels`); ``weights [L, H, T, T]`` for one example."""
    w = np.asarray(weights_LHTT, np.float64)
    if w.ndim != 4 or w.shape[-1] != w.shape[-2] or w.shape[-1] != len(labels):
        raise ValueError(f"weights of shape {w.shape} do not match {len(labels)} token labels "
                         "(expected [L, H, T, T])")
    data = {"tokens": [str(t) for t in labels], "weights": np.round(w, decimals).tolist()}
    # "</" cannot close the script element inside JSON: escape it.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    L, H, T, _ = w.shape
    sub = html.escape(subtitle or f"{L} layers x {H} heads, {T} tokens")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_CSS}{MATRIX_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<div class="sub">{sub}. Hover a token to see where it attends (orange = weight); click to pin it.</div>
<div class="controls">
  <label>Layer <select id="layer"></select></label>
  <label>Head <select id="head"></select></label>
</div>
<div id="tokens"></div>
<div class="row">
  <div><div id="matrix"></div>
  <div class="legend">rows: query token, columns: key token; red box: current query</div>
  <div class="legend" id="cell">&nbsp;</div></div>
  <div id="info"></div>
</div>
<script type="application/json" id="data">{payload}</script>
<script>{MATRIX_JS}{_JS}</script>
</body></html>
"""


def write_attention_explorer(path, labels: Sequence[str], weights_LHTT, *, title: str = "attention explorer",
                             subtitle: str = "") -> str:
    """Write :func:`attention_explorer_html` to ``path`` (creating its folder); returns the path."""
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(attention_explorer_html(labels, weights_LHTT, title=title, subtitle=subtitle))
    return path

