"""``ModernBertForMaskedLM`` <-> :class:`ModelConfig` and jaxformer's parameters.

ModernBERT is a pre-norm :class:`jaxformer.Encoder` (``causal=False``): token embeddings and a
norm (``embed_norm``), no norm before layer 0's attention (``first_attn_norm=False``), RoPE with
``rope_theta`` on the full layers and ``rope_local_theta`` on the sliding ones, whose keys lie
less than ``local_attention // 2 + 1`` away on either side (``sliding_window``), an exact-GELU
GeGLU (``geglu_exact``), the final norm ``ln_f``, and the masked-LM head (``mlm_head``: dense,
``mlm_activation``, norm, the tied decoder and its bias). ``attention_bias``, ``mlp_bias`` and
``norm_bias`` must be false (``bias=False``); ``classifier_bias`` is ``mlm_bias``.

The tensor table, per layer ``i`` (HF ``[out, in]`` weights)::

    model.embeddings.tok_embeddings / .norm       -> tok_emb / ln_emb
    model.layers.i.attn_norm (i >= 1)             -> blocks.ln1 (layer 0's is unused: ones)
    model.layers.i.attn.Wqkv [3*H*K, D]           -> blocks.attn.w{q,k,v}
    model.layers.i.attn.Wo                        -> blocks.attn.wo
    model.layers.i.mlp_norm                       -> blocks.ln2
    model.layers.i.mlp.Wi [2F, D] = [act half; gate half] -> blocks.mlp.w_gate, w_in
    model.layers.i.mlp.Wo                         -> blocks.mlp.w_out
    model.final_norm                              -> ln_f
    head.dense / head.norm / decoder.bias         -> mlm.w, mlm.b / mlm.ln / mlm.bias
    decoder.weight (tied: optional, equal to the embeddings)
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np

from jaxformer.config import ModelConfig
from jaxformer.errors import CheckpointError
from jaxformer.interop.hf_rules import Layout, Rule, copy, heads_out, linear

__all__ = ["MODERNBERT", "modernbert_fields", "modernbert_hf_config", "modernbert_layout"]

MODERNBERT = "ModernBertForMaskedLM"
#: transformers' defaults for keys a config.json may leave out.
DEFAULTS = dict(vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22,
                num_attention_heads=12, hidden_activation="gelu", max_position_embeddings=8192, norm_eps=1e-5,
                norm_bias=False, attention_bias=False, mlp_bias=False, local_attention=128, decoder_bias=True,
                classifier_bias=False, classifier_activation="gelu", global_attn_every_n_layers=3,
                global_rope_theta=160000.0, local_rope_theta=10000.0, tie_word_embeddings=True)
_ACTS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}
_GLU = {"gelu_exact": "geglu_exact", "gelu": "geglu"}


def _refuse(key: str, value, allowed: str):
    raise CheckpointError(f"config.json {key}={value!r} is not supported for {MODERNBERT} (allowed: {allowed})")


def _thetas(hf: Mapping[str, Any], get) -> tuple:
    """(global, local) RoPE bases from ``rope_parameters`` (transformers 5) or the older keys."""
    params = hf.get("rope_parameters") or {}
    if hf.get("rope_scaling"):
        _refuse("rope_scaling", hf["rope_scaling"], "null (plain RoPE)")
    out = []
    for kind, old in (("full_attention", "global_rope_theta"), ("sliding_attention", "local_rope_theta")):
        p = params.get(kind) or {}
        if p.get("rope_type", "default") != "default":
            _refuse(f"rope_parameters.{kind}.rope_type", p["rope_type"], "'default'")
        out.append(float(p.get("rope_theta", get(old))))
    return tuple(out)


def modernbert_fields(hf: Mapping[str, Any]) -> Dict[str, Any]:
    """ModelConfig fields of a ModernBERT ``config.json`` dict; :class:`CheckpointError` naming
    the key of anything jaxformer cannot compute exactly."""
    get = lambda k: hf.get(k, DEFAULTS.get(k))  # noqa: E731
    for key in ("hidden_activation", "classifier_activation"):
        if get(key) not in _ACTS or (key == "hidden_activation" and _ACTS[get(key)] not in _GLU):
            allowed = _GLU if key == "hidden_activation" else _ACTS
            _refuse(key, get(key), ", ".join(repr(a) for a in _ACTS if _ACTS[a] in allowed or a in allowed))
    for key in ("norm_bias", "attention_bias", "mlp_bias"):
        if get(key):
            _refuse(key, get(key), "false (jaxformer's GeGLU has no gate bias)")
    if not get("decoder_bias"):
        _refuse("decoder_bias", get("decoder_bias"), "true")
    L = int(get("num_hidden_layers"))
    every = get("global_attn_every_n_layers")
    types = hf.get("layer_types") or ["sliding_attention" if i % every else "full_attention" for i in range(L)]
    if len(types) != L or not set(types) <= {"full_attention", "sliding_attention"}:
        _refuse("layer_types", types, f"'full_attention' or 'sliding_attention' for each of the {L} layers")
    window = int(get("local_attention")) // 2 + 1
    theta, local = _thetas(hf, get)
    return dict(vocab_size=int(get("vocab_size")), d_model=int(get("hidden_size")),
                n_head=int(get("num_attention_heads")), n_layer=L, d_ff=int(get("intermediate_size")),
                max_len=int(get("max_position_embeddings")), norm_position="pre", norm="layernorm",
                norm_eps=float(get("norm_eps")), activation=_GLU[_ACTS[get("hidden_activation")]],
                mlm_activation=_ACTS[get("classifier_activation")], positions="rope", rope_theta=theta,
                rope_local_theta=local, sliding_window=window,
                layer_types=tuple("sliding" if t == "sliding_attention" else "full" for t in types),
                embed_norm=True, first_attn_norm=False, mlm_head=True, mlm_bias=bool(get("classifier_bias")),
                causal=False, bias=False, qkv_bias=False, tie_embeddings=bool(get("tie_word_embeddings")),
                dropout=0.0)


def modernbert_hf_config(c: ModelConfig) -> Dict[str, Any]:
    """The ``config.json`` dict for ``c`` (exactness is checked by the caller)."""
    glu = {v: k for k, v in _GLU.items()}.get(c.activation, c.activation)
    act = lambda a: {"gelu_exact": "gelu", "gelu": "gelu_pytorch_tanh"}.get(a, a)  # noqa: E731
    window = c.sliding_window if c.sliding_window is not None else c.max_len
    return {"architectures": [MODERNBERT], "model_type": "modernbert", "vocab_size": c.vocab_size,
            "hidden_size": c.d_model, "intermediate_size": c.d_ff, "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head, "hidden_activation": act(glu),
            "max_position_embeddings": c.max_len, "initializer_range": c.init_std, "norm_eps": c.norm_eps,
            "norm_bias": False, "attention_bias": False, "mlp_bias": False, "local_attention": 2 * (window - 1),
            "layer_types": ["sliding_attention" if s else "full_attention" for s in c.sliding_layers],
            "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": c.rope_theta},
                                "sliding_attention": {"rope_type": "default",
                                                      "rope_theta": c.rope_local_theta or c.rope_theta}},
            "global_rope_theta": c.rope_theta, "local_rope_theta": c.rope_local_theta or c.rope_theta,
            "decoder_bias": True, "classifier_bias": c.mlm_bias,
            "classifier_activation": act(c.mlm_activation or c.activation), "tie_word_embeddings": c.tie_embeddings,
            "embedding_dropout": 0.0, "attention_dropout": 0.0, "mlp_dropout": 0.0, "dtype": "float32",
            "pad_token_id": None, "bos_token_id": None, "eos_token_id": None, "cls_token_id": None,
            "sep_token_id": None}


def _wqkv(H: int) -> Rule:
    def load(w):   # [3*H*K, D] -> q, k, v as [D, H, K]
        return tuple(p.transpose(2, 0, 1) for p in w.reshape(3, H, -1, w.shape[1]))

    def save(*qkv):
        return (np.concatenate([a.reshape(a.shape[0], -1).T for a in qkv]),)
    return Rule(("blocks/attn/wq", "blocks/attn/wk", "blocks/attn/wv"), ("model.layers.{i}.attn.Wqkv.weight",),
                load, save)


def _wi() -> Rule:
    def load(w):   # [2F, D]: the half the activation reads first, then the gate's
        a, g = np.split(w, 2, axis=0)
        return a.T, g.T
    return Rule(("blocks/mlp/w_gate", "blocks/mlp/w_in"), ("model.layers.{i}.mlp.Wi.weight",), load,
                lambda a, g: (np.concatenate([a.T, g.T]),))


def _norm(ours: str, hf: str, bias: bool, first_layer: int = 0):
    rules = [Rule((f"{ours}/scale",), (f"{hf}.weight",), lambda a: (a,), lambda a: (a,), 0, first_layer, 1.0)]
    return rules + ([Rule((f"{ours}/bias",), (f"{hf}.bias",), lambda a: (a,), lambda a: (a,), 0, first_layer)]
                    if bias else [])


def modernbert_layout(c: ModelConfig) -> Layout:
    """The tensor table (see the module docstring)."""
    H, b, e = c.n_head, False, "model.layers.{i}."
    rules = [copy("tok_emb", "model.embeddings.tok_embeddings.weight"),
             *_norm("ln_emb", "model.embeddings.norm", b),
             *_norm("blocks/ln1", e + "attn_norm", b, first_layer=1),
             _wqkv(H), heads_out("blocks/attn/wo", e + "attn.Wo.weight", H),
             *_norm("blocks/ln2", e + "mlp_norm", b), _wi(), linear("blocks/mlp/w_out", e + "mlp.Wo.weight"),
             *_norm("ln_f", "model.final_norm", b), linear("mlm/w", "head.dense.weight"),
             *_norm("mlm/ln", "head.norm", b), copy("mlm/bias", "decoder.bias")]
    if c.mlm_bias:
        rules.append(copy("mlm/b", "head.dense.bias"))
    if not c.tie_embeddings:
        rules.append(linear("lm_head", "decoder.weight"))
    return Layout("model.", rules, None, head="decoder.weight", embeddings="model.embeddings.tok_embeddings.weight")
