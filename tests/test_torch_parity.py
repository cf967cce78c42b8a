"""Parity with PyTorch's nn.MultiheadAttention and a PyTorch pre-norm block (needs the hf extra)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

from conftest import randomize  # noqa: E402
from jaxformer import GPT, ModelConfig  # noqa: E402
from jaxformer import functional as F  # noqa: E402
from jaxformer_testing.torch_gpt import torch_mha_from_params  # noqa: E402

pytestmark = pytest.mark.hf


def test_mha_matches_torch():
    D, H, T = 16, 4, 7
    cfg = ModelConfig(vocab_size=11, d_model=D, n_head=H, n_layer=1, d_ff=32, max_len=T)
    p = randomize(GPT.abstract(cfg).params(), seed=5)["blocks"]["attn"]
    p = {k: v[0] for k, v in p.items()}
    x = np.random.default_rng(0).normal(size=(2, T, D)).astype(np.float32)
    ours, w = F.multi_head_attention(p, jnp.asarray(x), mask=F.causal_mask(T))[:2]
    mha = torch_mha_from_params(p, D, H)
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)  # torch: True = masked out
    ref, ref_w = mha(*(torch.from_numpy(x).double(),) * 3, attn_mask=causal, average_attn_weights=False)
    np.testing.assert_allclose(np.asarray(ours), ref.detach().numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(w), ref_w.detach().numpy(), atol=1e-6)


def test_block_matches_torch_pre_norm_block():
    D, H, T = 16, 4, 6
    cfg = ModelConfig(vocab_size=11, d_model=D, n_head=H, n_layer=1, d_ff=32, max_len=T, activation="gelu")
    p = randomize(GPT.abstract(cfg).params(), seed=6)["blocks"]
    p = {k: {n: v[0] for n, v in d.items()} for k, d in p.items()}
    x = np.random.default_rng(1).normal(size=(2, T, D)).astype(np.float32)
    ours, _ = F.decoder_block(p, jnp.asarray(x), cfg, mask=F.causal_mask(T))

    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731
    ln = lambda y, q: torch.nn.functional.layer_norm(y, (D,), t(q["scale"]), t(q["bias"]), 1e-5)  # noqa: E731
    mha = torch_mha_from_params(p["attn"], D, H)
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    xt = t(x)
    h = ln(xt, p["ln1"])
    xt = xt + mha(h, h, h, attn_mask=causal, need_weights=False)[0]
    h = ln(xt, p["ln2"])
    m = p["mlp"]
    h = torch.nn.functional.gelu(h @ t(m["w_in"]) + t(m["b_in"]), approximate="tanh")
    xt = xt + h @ t(m["w_out"]) + t(m["b_out"])
    np.testing.assert_allclose(np.asarray(ours), xt.detach().numpy(), atol=1e-5, rtol=1e-5)
