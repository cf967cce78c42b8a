"""The default initialisation scales with the width (``model.init_std: null`` = ``d_model ** -0.5``),
so a lab-sized model shows structure in its first attention heatmap; a pinned ``init_std`` is kept."""
from __future__ import annotations

import jax.numpy as jnp
import pytest
from flax import nnx

from jaxformer import GPT, ModelConfig, attention_maps, load_config
from jaxformer.config import config_source, read_yaml, shipped_configs


def _last_row(init_std, seed):
    """Attention weights of the last of 4 tokens (it sees all 4) in a 1-head, 8-wide model at init."""
    cfg = ModelConfig(vocab_size=4, d_model=8, n_head=1, n_layer=1, max_len=8, init_std=init_std)
    model = GPT(cfg, rngs=nnx.Rngs(seed))
    return attention_maps(model, jnp.array([[0, 1, 2, 3]]))[0, 0, 0, -1]   # "hello i am moooaahhh"


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_lab_sized_model_is_not_flat_at_init(seed):
    w = _last_row(None, seed)
    assert float(w.max() - w.min()) >= 0.1


def test_gpt2_init_is_flat_at_lab_size():
    """What the width default fixes: with GPT-2's 0.02 the 4 weights are all within 0.01 of 1/4."""
    w = _last_row(0.02, 0)
    assert float(jnp.abs(w - 0.25).max()) < 0.01


def test_init_std_default_is_inverse_sqrt_width():
    assert ModelConfig(d_model=8).init_std == 8 ** -0.5
    assert ModelConfig(d_model=768).init_std == 768 ** -0.5
    assert ModelConfig(d_model=8, init_std=0.02).init_std == 0.02
    assert load_config(None, ["model.d_model=64", "model.init_std=null"]).model.init_std == 64 ** -0.5


@pytest.mark.parametrize("name", shipped_configs())
def test_every_shipped_config_states_its_init(name):
    raw = read_yaml(config_source(name))
    assert "init_std" in raw["model"], f"configs/{name}.yaml does not state model.init_std"
