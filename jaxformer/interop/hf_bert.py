"""The BERT family (masked-LM encoders) <-> :class:`ModelConfig` and jaxformer's parameters.

``BertForMaskedLM``, ``RobertaForMaskedLM`` and ``XLMRobertaForMaskedLM`` are one model for
jaxformer: an :class:`jaxformer.Encoder` (``causal=False``) with post-norm layer norms,
biases everywhere, learned positions, token-type embeddings (``type_vocab_size``), a norm on
the summed embeddings (``embed_norm``) and the masked-LM head (``mlm_head``: dense, activation,
norm, the tied decoder and a ``[V]`` bias). RoBERTa and XLM-R number positions from
``pad_token_id + 1`` (``position_offset=2``; their table has ``max_len + 2`` rows); so a
right-padded batch with its attention mask gives the logits ``transformers`` gives.

The tensor table, per layer ``i`` (prefix ``bert.`` or ``roberta.``; HF ``[out, in]`` weights)::

    embeddings.word_embeddings / position_embeddings / token_type_embeddings -> tok_emb / pos_emb / type_emb
    embeddings.LayerNorm                          -> ln_emb
    encoder.layer.i.attention.self.{query,key,value}.{weight,bias} -> blocks.attn.w{q,k,v}, b{q,k,v}
    encoder.layer.i.attention.output.dense        -> blocks.attn.wo, bo
    encoder.layer.i.attention.output.LayerNorm    -> blocks.ln1
    encoder.layer.i.intermediate.dense / output.dense -> blocks.mlp.w_in, b_in / w_out, b_out
    encoder.layer.i.output.LayerNorm              -> blocks.ln2
    cls.predictions.transform.dense / .LayerNorm / cls.predictions.bias   (BERT)
    lm_head.dense / lm_head.layer_norm / lm_head.bias                     (RoBERTa, XLM-R)
                                                  -> mlm.w, mlm.b / mlm.ln / mlm.bias
    ...decoder.weight (tied: optional, equal to the embeddings), ...decoder.bias (optional, equal to the bias)

Buffers (``position_ids``, ``token_type_ids``) and the parts a masked LM does not use (the
pooler, BERT's next-sentence head ``cls.seq_relationship``) are skipped.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping

from jaxformer.config import ModelConfig
from jaxformer.errors import CheckpointError
from jaxformer.interop.hf_rules import Layout, bias_heads, copy, heads_in, heads_out, linear, norm_rules

__all__ = ["BERT", "ROBERTA", "XLM_ROBERTA", "BERT_ARCHITECTURES", "BERT_MODEL_TYPES", "bert_fields",
           "bert_hf_config", "bert_layout"]

BERT, ROBERTA, XLM_ROBERTA = "BertForMaskedLM", "RobertaForMaskedLM", "XLMRobertaForMaskedLM"
BERT_ARCHITECTURES = (BERT, ROBERTA, XLM_ROBERTA)
BERT_MODEL_TYPES = {BERT: "bert", ROBERTA: "roberta", XLM_ROBERTA: "xlm-roberta"}
#: transformers' defaults for keys a config.json may leave out.
DEFAULTS = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2,
                layer_norm_eps=1e-12, position_embedding_type="absolute", is_decoder=False,
                add_cross_attention=False, tie_word_embeddings=True)
_ACTS = {"gelu": "gelu_exact", "relu": "relu", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}


def _refuse(key: str, value, allowed: str, arch: str):
    raise CheckpointError(f"config.json {key}={value!r} is not supported for {arch} (allowed: {allowed})")


def bert_fields(hf: Mapping[str, Any], arch: str) -> Dict[str, Any]:
    """ModelConfig fields of a BERT / RoBERTa / XLM-R ``config.json`` dict; :class:`CheckpointError`
    naming the key of anything jaxformer cannot compute exactly."""
    get = lambda k: hf.get(k, DEFAULTS.get(k))  # noqa: E731
    if get("position_embedding_type") not in ("absolute", None):
        _refuse("position_embedding_type", get("position_embedding_type"), "'absolute'", arch)
    for key in ("is_decoder", "add_cross_attention"):
        if get(key):
            _refuse(key, get(key), "false (an encoder without cross-attention)", arch)
    if get("hidden_act") not in _ACTS:
        _refuse("hidden_act", get("hidden_act"), ", ".join(map(repr, _ACTS)), arch)
    types = get("type_vocab_size")
    if isinstance(types, bool) or not isinstance(types, int) or types < 1:
        _refuse("type_vocab_size", types, "an integer >= 1", arch)
    offset = 0
    if arch != BERT:   # RoBERTa's positions start after the padding id
        pad = hf.get("pad_token_id", 1)
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            _refuse("pad_token_id", pad, "a token id (RoBERTa's positions start at pad_token_id + 1)", arch)
        offset = pad + 1
    P = int(get("max_position_embeddings"))
    if P <= offset:
        _refuse("max_position_embeddings", P, f"more than the position offset {offset}", arch)
    return dict(vocab_size=int(get("vocab_size")), d_model=int(get("hidden_size")),
                n_head=int(get("num_attention_heads")), n_layer=int(get("num_hidden_layers")),
                d_ff=int(get("intermediate_size")), max_len=P - offset, position_offset=offset,
                norm_position="post", norm="layernorm", norm_eps=float(get("layer_norm_eps")),
                activation=_ACTS[get("hidden_act")], positions="learned", type_vocab_size=types,
                embed_norm=True, mlm_head=True, causal=False, bias=True, qkv_bias=True,
                tie_embeddings=bool(get("tie_word_embeddings")), dropout=0.0)


def bert_hf_config(c: ModelConfig, arch: str) -> Dict[str, Any]:
    """The ``config.json`` dict of ``arch`` for ``c`` (exactness is checked by the caller)."""
    hf = {"architectures": [arch], "model_type": BERT_MODEL_TYPES[arch], "vocab_size": c.vocab_size,
          "hidden_size": c.d_model, "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
          "intermediate_size": c.d_ff,
          "hidden_act": {"gelu_exact": "gelu", "gelu": "gelu_new"}.get(c.activation, c.activation),
          "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
          "max_position_embeddings": c.max_len + c.position_offset, "type_vocab_size": c.type_vocab_size,
          "initializer_range": c.init_std, "layer_norm_eps": c.norm_eps, "position_embedding_type": "absolute",
          "is_decoder": False, "add_cross_attention": False, "tie_word_embeddings": c.tie_embeddings,
          "pad_token_id": 0 if arch == BERT else c.position_offset - 1, "dtype": "float32"}
    if arch != BERT:
        hf.update(bos_token_id=0, eos_token_id=2)
    return hf


def bert_layout(c: ModelConfig, arch: str) -> Layout:
    """The tensor table of ``arch`` (see the module docstring)."""
    H = c.n_head
    p, head = ("bert.", "cls.predictions.") if arch == BERT else ("roberta.", "lm_head.")
    e, a = p + "encoder.layer.{i}.", p + "encoder.layer.{i}.attention."
    dense, ln = ("transform.dense", "transform.LayerNorm") if arch == BERT else ("dense", "layer_norm")
    rules = [copy("tok_emb", p + "embeddings.word_embeddings.weight"),
             copy("pos_emb", p + "embeddings.position_embeddings.weight"),
             copy("type_emb", p + "embeddings.token_type_embeddings.weight"),
             *norm_rules("ln_emb", p + "embeddings.LayerNorm", True)]
    for n, hf in (("q", "query"), ("k", "key"), ("v", "value")):
        rules += [heads_in(f"blocks/attn/w{n}", a + f"self.{hf}.weight", H),
                  bias_heads(f"blocks/attn/b{n}", a + f"self.{hf}.bias", H)]
    rules += [heads_out("blocks/attn/wo", a + "output.dense.weight", H), copy("blocks/attn/bo", a + "output.dense.bias"),
              *norm_rules("blocks/ln1", a + "output.LayerNorm", True),
              linear("blocks/mlp/w_in", e + "intermediate.dense.weight"),
              copy("blocks/mlp/b_in", e + "intermediate.dense.bias"),
              linear("blocks/mlp/w_out", e + "output.dense.weight"), copy("blocks/mlp/b_out", e + "output.dense.bias"),
              *norm_rules("blocks/ln2", e + "output.LayerNorm", True),
              linear("mlm/w", head + dense + ".weight"), copy("mlm/b", head + dense + ".bias"),
              *norm_rules("mlm/ln", head + ln, True), copy("mlm/bias", head + "bias")]
    if not c.tie_embeddings:
        rules.append(linear("lm_head", head + "decoder.weight"))
    skip = re.compile(r"^(embeddings\.(position_ids|token_type_ids)|pooler\.dense\.(weight|bias)"
                      r"|cls\.seq_relationship\.(weight|bias))$")
    return Layout(p, rules, skip, head=head + "decoder.weight", embeddings=p + "embeddings.word_embeddings.weight",
                  duplicates={head + "decoder.bias": head + "bias"})
