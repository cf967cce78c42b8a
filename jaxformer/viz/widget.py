"""An attention widget for Jupyter (anywidget): type a text, pick a layer and a head, hover a
cell for its weight, and the map follows, computed by the model in the kernel.

    >>> from jaxformer import load_run
    >>> from jaxformer.viz.widget import attention_widget
    >>> attention_widget(load_run("runs/toy"), text="def main(args):")     # the last line of a cell

``run_or_model`` is a loaded run (anything with ``.model`` and ``.tokenizer``, as
:func:`jaxformer.load_run` and :func:`jaxformer.train` return) or a :class:`jaxformer.GPT`
with its ``tokenizer``. The widget's synced state is plain data: ``text``, ``tokens`` (one
label per token, :func:`jaxformer.viz.text.token_labels`), ``weights`` (``[L, H, T, T]``
nested lists, rounded to 4 decimals), ``layer``, ``head`` and ``error`` (the message of a
text the model cannot take, e.g. longer than ``max_len``; the last good map stays). Both
axes are labelled with the tokens (the explorer's drawing, :data:`jaxformer.viz.explorer.MATRIX_JS`).
Needs the ``notebook`` extra (``pip install -e ".[notebook]"``: anywidget).
"""
from __future__ import annotations

import functools

import numpy as np

from jaxformer.errors import DataError, JaxformerError, require_extra
from jaxformer.interp.activations import attention_maps
from jaxformer.viz.explorer import MATRIX_CSS, MATRIX_JS
from jaxformer.viz.text import token_labels

__all__ = ["attention_widget", "widget_class", "attention_state"]

_ESM = MATRIX_JS + r"""
function blues(w) {
  const a = Math.min(1, Math.max(0, w));
  return 'rgb(' + Math.round(247 - 239 * a) + ',' + Math.round(251 - 203 * a) + ',' + Math.round(255 - 148 * a) + ')';
}
function render({ model, el }) {
  el.classList.add('jf-widget');
  el.innerHTML = '<div class="jf-controls"><input class="jf-text" type="text" size="48">' +
    '<label>layer <select class="jf-layer"></select></label>' +
    '<label>head <select class="jf-head"></select></label></div>' +
    '<div class="jf-error"></div><div class="jf-box"></div><div class="jf-cell">&nbsp;</div>';
  const input = el.querySelector('.jf-text'), layerSel = el.querySelector('.jf-layer');
  const headSel = el.querySelector('.jf-head'), box = el.querySelector('.jf-box');
  const cell = el.querySelector('.jf-cell'), error = el.querySelector('.jf-error');
  input.value = model.get('text');
  input.addEventListener('change', () => { model.set('text', input.value); model.save_changes(); });
  layerSel.addEventListener('change', () => { model.set('layer', +layerSel.value); model.save_changes(); });
  headSel.addEventListener('change', () => { model.set('head', +headSel.value); model.save_changes(); });
  function options(sel, n, name, value) {
    if (sel.options.length !== n) {
      sel.innerHTML = '';
      for (let i = 0; i < n; i++) sel.add(new Option(name + ' ' + i, i));
    }
    sel.value = value;
  }
  function draw() {
    const W = model.get('weights'), tokens = model.get('tokens');
    error.textContent = model.get('error');
    if (!W.length) return;
    const l = Math.min(model.get('layer'), W.length - 1), h = Math.min(model.get('head'), W[0].length - 1);
    options(layerSel, W.length, 'layer', l);
    options(headSel, W[0].length, 'head', h);
    labelledMatrix(box, tokens, W[l][h], { color: blues, onHover: (t, s, w) => {
      cell.textContent = 'query ' + t + ' ' + tokens[t] + ' \u2192 key ' + s + ' ' + tokens[s] + ': ' + w.toFixed(4);
    }});
  }
  for (const name of ['weights', 'tokens', 'layer', 'head', 'error']) model.on('change:' + name, draw);
  model.on('change:text', () => { if (input.value !== model.get('text')) input.value = model.get('text'); });
  draw();
}
export default { render };
"""

_CSS = MATRIX_CSS + """
.jf-widget{font-family:system-ui,sans-serif;font-size:13px}
.jf-controls{display:flex;gap:14px;align-items:center;margin-bottom:8px}
.jf-error{color:#b00020;min-height:1em}
.jf-cell{color:#444;margin-top:4px;font-family:monospace}
"""


def attention_state(model, tokenizer, text: str) -> dict:
    """The widget's data for ``text``: ``{"tokens": [T] labels, "weights": [L, H, T, T] nested
    lists}``. Raises :class:`DataError` for a text that is empty after tokenization or longer
    than the model's ``max_len``."""
    ids = tokenizer.encode(text)
    if not ids:
        raise DataError("text is empty after tokenization: give at least one token")
    max_len = model.config.max_len
    if len(ids) > max_len:
        raise DataError(f"text is {len(ids)} tokens long; the model's context max_len={max_len}")
    weights_LHTT = np.asarray(attention_maps(model, np.asarray([ids], np.int32))[0], np.float64)
    return {"tokens": token_labels(tokenizer, ids), "weights": np.round(weights_LHTT, 4).tolist()}


@functools.lru_cache(maxsize=1)
def widget_class() -> type:
    """The ``anywidget.AnyWidget`` subclass behind :func:`attention_widget` (defined on first
    use: importing this module needs no anywidget)."""
    require_extra("notebook", "anywidget", what="the attention widget")
    import anywidget
    import traitlets

    class AttentionWidget(anywidget.AnyWidget):
        """Attention maps of a model on a text the learner types (see :mod:`jaxformer.viz.widget`)."""

        _esm = _ESM
        _css = _CSS
        text = traitlets.Unicode("").tag(sync=True)
        tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
        weights = traitlets.List().tag(sync=True)
        layer = traitlets.Int(0).tag(sync=True)
        head = traitlets.Int(0).tag(sync=True)
        error = traitlets.Unicode("").tag(sync=True)

    return AttentionWidget


def _model_and_tokenizer(run_or_model, tokenizer):
    if hasattr(run_or_model, "model") and hasattr(run_or_model, "tokenizer"):
        return run_or_model.model, tokenizer or run_or_model.tokenizer
    if tokenizer is None:
        raise DataError("attention_widget(model) needs tokenizer=: pass a loaded run "
                        "(jaxformer.load_run(...)) or a model with its tokenizer")
    return run_or_model, tokenizer


def _on_text(change, *, widget, model, tokenizer) -> None:
    """Recompute the maps for the new text; a text the model cannot take sets ``error``."""
    try:
        state = attention_state(model, tokenizer, change["new"])
    except JaxformerError as e:
        widget.error = str(e)
        return
    with widget.hold_sync():
        widget.error = ""
        widget.tokens, widget.weights = state["tokens"], state["weights"]


def attention_widget(run_or_model, tokenizer=None, text: str = "The cat sat on the mat.", *,
                     layer: int = 0, head: int = 0):
    """A Jupyter widget of the attention of ``run_or_model`` (a loaded run, or a GPT with its
    ``tokenizer``) on ``text``: a text box (press Enter to recompute), layer and head menus,
    the ``[T, T]`` map with token labels on both axes, and the weight of the cell under the
    pointer. Raises :class:`DataError` if ``text`` does not fit the model; ``layer`` and
    ``head`` must name one of the model's."""
    model, tokenizer = _model_and_tokenizer(run_or_model, tokenizer)
    cfg = model.config
    for name, value, limit in (("layer", layer, cfg.n_layer), ("head", head, cfg.n_head)):
        if not 0 <= value < limit:
            raise DataError(f"{name}={value} is out of range: the model has {limit} ({name}s 0..{limit - 1})")
    state = attention_state(model, tokenizer, text)
    widget = widget_class()(text=text, layer=layer, head=head, **state)
    widget.observe(functools.partial(_on_text, widget=widget, model=model, tokenizer=tokenizer), names="text")
    return widget
