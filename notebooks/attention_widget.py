# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Attention in a notebook: an inline figure and a widget
#
# A one-layer, one-head model of width 8 over the labs' four-word vocabulary, untrained: its
# attention map as a figure (shown below the cell, no `%matplotlib` and no pyplot), then as a
# widget where you type your own sentence, pick a layer and a head, and hover a cell for its
# weight. Open it with `jupytext --to ipynb notebooks/attention_widget.py` (the `notebook`
# extra installs anywidget).

# %%
import numpy as np
from flax import nnx

from jaxformer import GPT, ModelConfig, attention_maps
from jaxformer.viz import attention_figures
from jaxformer.viz.text import token_labels
from jaxformer.viz.widget import attention_widget

# %% [markdown]
# A tokenizer is anything with `encode(text) -> ids` and `decode(ids) -> text`: here a plain
# list of words, with `<unk>` for a word it does not know.

# %%
WORDS = ["<unk>", "hello", "i", "am", "moooaahhh"]


class Words:
    def encode(self, text):
        return [WORDS.index(w) if w in WORDS else 0 for w in text.split()]

    def decode(self, ids):
        return " ".join(WORDS[i] for i in ids)


tok = Words()
config = ModelConfig(vocab_size=len(WORDS), d_model=8, n_head=1, n_layer=1, d_ff=32, max_len=16)
model = GPT(config, rngs=nnx.Rngs(0))

# %% [markdown]
# The figure: rows are the attending (query) words, columns the attended-to (key) words, each
# weight written in its cell. A figure returned by `jaxformer.viz` displays as an image.

# %%
ids = tok.encode("hello i am moooaahhh")
w = np.asarray(attention_maps(model, np.asarray([ids]))[0])      # [L, H, T, T]
attention_figures.attention_heatmap(w[0, 0], token_labels(tok, ids), cmap="Blues", annotate=True,
                                    title="layer 0, head 0 at initialisation")

# %% [markdown]
# The widget: edit the text and press Enter; the map follows. It works the same from a run
# folder: `attention_widget(jaxformer.load_run("runs/toy"), text="def main(args):")`.

# %%
widget = attention_widget(model, tok, text="hello i am moooaahhh")
widget

# %% [markdown]
# Setting the text from Python recomputes the map, as typing does.

# %%
widget.text = "i am hello hello"
result = {"tokens": widget.tokens, "weights_shape": np.shape(widget.weights), "error": widget.error}
result
