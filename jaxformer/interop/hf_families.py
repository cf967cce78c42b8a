"""Hugging Face model families <-> :class:`ModelConfig`: which ``config.json`` is which model.

Twelve architectures are read and written (``transformers`` 5 names and defaults; older
``config.json`` files are read too):

=====================  ==========================================================================
architecture           jaxformer knobs
=====================  ==========================================================================
LlamaForCausalLM       pre-norm RMS norm, SwiGLU, RoPE (default / linear / llama3 scaling), GQA
MistralForCausalLM     Llama + ``sliding_window`` on every layer
Qwen2ForCausalLM       Llama + q/k/v biases (``bias=False, qkv_bias=True``); optional sliding
                       layers (``use_sliding_window``, ``max_window_layers`` or ``layer_types``)
Qwen3ForCausalLM       Llama + ``qk_norm`` (RMS norm over each head's q and k before RoPE)
GemmaForCausalLM       Llama with ``norm_offset=1`` (norms apply ``1 + w``), GeGLU (tanh GELU),
                       embeddings times ``sqrt(d_model)``, tied head
Gemma2ForCausalLM      Gemma + ``norm_position="sandwich"``, attention/final logit soft-caps,
                       ``attn_scale = query_pre_attn_scalar ** -0.5``, sliding layers
GPTNeoXForCausalLM     pre-norm layer norm with biases, partial RoPE (``rope_fraction``; an odd
                       width rotates one more dim, as transformers does),
                       ``parallel_residual``, erf or tanh GELU
GPT2LMHeadModel        see ``hf_gpt2.py``
BertForMaskedLM        encoders (``causal=False``): post-norm, token types, embedding norm, masked-LM
RobertaForMaskedLM     head; RoBERTa / XLM-R positions from ``pad_token_id + 1``; see ``hf_bert.py``
XLMRobertaForMaskedLM
ModernBertForMaskedLM  pre-norm encoder, RoPE with a local base on bidirectional sliding layers, exact-GELU
                       GeGLU, no norm before layer 0's attention; see ``hf_modernbert.py``
=====================  ==========================================================================

RoPE is read from ``rope_parameters`` (transformers 5: ``rope_type``, ``rope_theta``,
``partial_rotary_factor``, ``factor``, ``low_freq_factor``, ``high_freq_factor``,
``original_max_position_embeddings``) or the older ``rope_theta`` + ``rope_scaling`` (and
GPT-NeoX's ``rotary_pct`` / ``rotary_emb_base``). Anything jaxformer cannot compute exactly
(another rope type, MLP biases on Llama, bidirectional Gemma, ...) raises
:class:`CheckpointError` naming the ``config.json`` key and value. Export writes both the new
and the old RoPE keys, so ``transformers`` 4 and 5 read the same model.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Mapping, Optional

from jaxformer.config import ModelConfig
from jaxformer.errors import CheckpointError, ConfigError
from jaxformer.interop import hf_gpt2
from jaxformer.interop.hf_bert import BERT, BERT_ARCHITECTURES, BERT_MODEL_TYPES, ROBERTA, bert_fields, bert_hf_config
from jaxformer.interop.hf_modernbert import MODERNBERT, modernbert_fields, modernbert_hf_config

__all__ = ["ARCHITECTURES", "detect_architecture", "model_config_from_hf_family",
           "hf_config_for", "infer_architecture"]

LLAMA, MISTRAL, QWEN2, QWEN3 = "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"
GEMMA, GEMMA2, NEOX, GPT2 = "GemmaForCausalLM", "Gemma2ForCausalLM", "GPTNeoXForCausalLM", "GPT2LMHeadModel"
ARCHITECTURES = (LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA, GEMMA2, NEOX, GPT2) + BERT_ARCHITECTURES + (MODERNBERT,)
MODEL_TYPES = {LLAMA: "llama", MISTRAL: "mistral", QWEN2: "qwen2", QWEN3: "qwen3", GEMMA: "gemma",
               GEMMA2: "gemma2", NEOX: "gpt_neox", GPT2: "gpt2", **BERT_MODEL_TYPES,
               MODERNBERT: "modernbert"}

_LLAMA_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=None, head_dim=None, hidden_act="silu",
                       max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
                       attention_bias=False, mlp_bias=False)
_QWEN_DEFAULTS = dict(_LLAMA_DEFAULTS, vocab_size=151936, intermediate_size=22016, num_key_value_heads=32,
                      max_position_embeddings=32768, use_sliding_window=False, sliding_window=4096,
                      max_window_layers=28, layer_types=None)
#: transformers 5's defaults for keys a config.json may leave out, per architecture.
DEFAULTS: Dict[str, Dict[str, Any]] = {
    LLAMA: _LLAMA_DEFAULTS,
    MISTRAL: dict(_LLAMA_DEFAULTS, intermediate_size=14336, num_key_value_heads=8,
                  max_position_embeddings=4096 * 32, sliding_window=4096),
    QWEN2: _QWEN_DEFAULTS,
    QWEN3: dict(_QWEN_DEFAULTS, head_dim=128),
    GEMMA: dict(_LLAMA_DEFAULTS, vocab_size=256000, hidden_size=3072, intermediate_size=24576,
                num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=16, head_dim=256,
                hidden_act="gelu_pytorch_tanh", max_position_embeddings=8192, tie_word_embeddings=True,
                use_bidirectional_attention=False),
    GEMMA2: dict(_LLAMA_DEFAULTS, vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                 num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                 hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192,
                 tie_word_embeddings=True, query_pre_attn_scalar=256, sliding_window=4096, layer_types=None,
                 final_logit_softcapping=30.0, attn_logit_softcapping=50.0, use_bidirectional_attention=False),
    NEOX: dict(vocab_size=50432, hidden_size=6144, num_hidden_layers=44, num_attention_heads=64,
               intermediate_size=24576, hidden_act="gelu", max_position_embeddings=2048, layer_norm_eps=1e-5,
               tie_word_embeddings=False, use_parallel_residual=True, attention_bias=True),
}
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_ROPE_TYPES = ("default", "linear", "llama3")
_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}


def _show(v) -> str:
    return json.dumps(v) if v is None or isinstance(v, bool) else repr(v)


def _refuse(key: str, value, allowed, arch: Optional[str] = None):
    where = f" for {arch}" if arch else ""
    allowed = ", ".join(_show(a) for a in allowed) if isinstance(allowed, (tuple, list)) else allowed
    raise CheckpointError(f"config.json {key}={_show(value)} is not supported{where} (allowed: {allowed})")


# ----------------------------------------------------------------------------- detection
def detect_architecture(hf: Mapping[str, Any]) -> str:
    """The architecture of a ``config.json`` dict: ``architectures[0]`` when given, else the
    one its ``model_type`` names. Raises :class:`CheckpointError` for anything else."""
    archs = hf.get("architectures")
    if archs:
        if not isinstance(archs, list) or archs[0] not in ARCHITECTURES:
            _refuse("architectures", archs, ARCHITECTURES)
        return archs[0]
    by_type = {t: a for a, t in MODEL_TYPES.items()}
    model_type = hf.get("model_type")
    if model_type not in by_type:
        _refuse("model_type", model_type, tuple(by_type))
    return by_type[model_type]


# ----------------------------------------------------------------------------- reading
def _rope(hf: Mapping[str, Any], arch: str, max_len: int) -> tuple:
    """``(fields, rope_fraction)`` of the RoPE settings in either config.json style."""
    src = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    params = hf.get(src) or {}
    if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
        _refuse(src, params, "one flat object (per-layer-type RoPE is not supported)", arch)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in _ROPE_TYPES:
        _refuse(f"{src}.rope_type", rope_type, _ROPE_TYPES, arch)
    if arch == NEOX:   # transformers reads GPT-NeoX's rotary_emb_base / rotary_pct, never rope_theta
        theta = params.get("rope_theta", hf.get("rotary_emb_base", 10000.0))
        fraction = params.get("partial_rotary_factor", hf.get("rotary_pct", 0.25))
    else:
        theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
        fraction = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    fields: Dict[str, Any] = dict(positions="rope", rope_theta=float(theta))
    try:
        if rope_type == "linear":
            fields.update(rope_scaling="linear", rope_scaling_factor=float(params["factor"]))
        elif rope_type == "llama3":
            fields.update(rope_scaling="llama3", rope_scaling_factor=float(params["factor"]),
                          rope_low_freq_factor=float(params["low_freq_factor"]),
                          rope_high_freq_factor=float(params["high_freq_factor"]),
                          rope_original_max_len=int(params.get("original_max_position_embeddings") or max_len))
    except KeyError as e:
        raise CheckpointError(f"config.json {src} has rope_type={rope_type!r} but no {e.args[0]!r}") from None
    return fields, float(fraction)


def _windows(hf, arch: str, n_layer: int, window, types) -> dict:
    """``sliding_window`` / ``layer_types`` fields from a window and HF per-layer types."""
    if window is None:
        return {}
    if types is None:
        return {"sliding_window": int(window)}
    if not isinstance(types, list) or len(types) != n_layer or any(t not in _LAYER_TYPES for t in types):
        _refuse("layer_types", types, f"{n_layer} of {', '.join(map(repr, _LAYER_TYPES))}", arch)
    ours = tuple(_LAYER_TYPES[t] for t in types)
    if "sliding" not in ours:
        return {}
    return {"sliding_window": int(window), "layer_types": None if "full" not in ours else ours}


def _llama_like(hf, arch: str, get) -> dict:
    """Fields shared by Llama, Mistral, Qwen2/3 and Gemma 1/2."""
    D, H = int(get("hidden_size")), int(get("num_attention_heads"))
    if not get("head_dim") and D % H:
        _refuse("num_attention_heads", H, f"a divisor of hidden_size={D} when head_dim is not given", arch)
    G = int(get("num_key_value_heads") or H)
    K = int(get("head_dim") or D // H)
    L, P = int(get("num_hidden_layers")), int(get("max_position_embeddings"))
    rope, fraction = _rope(hf, arch, P)
    if fraction != 1.0:
        _refuse("partial_rotary_factor", fraction, (1.0,), arch)
    return dict(vocab_size=int(get("vocab_size")), d_model=D, n_head=H, n_layer=L,
                d_ff=int(get("intermediate_size")), max_len=P, n_kv_head=None if G == H else G,
                head_dim=None if K * H == D else K, norm_position="pre", norm="rmsnorm",
                norm_eps=float(get("rms_norm_eps")), activation="swiglu", bias=False, qkv_bias=False,
                tie_embeddings=bool(get("tie_word_embeddings")), dropout=0.0, **rope)


def _fields(hf: Mapping[str, Any], arch: str) -> dict:
    if arch in BERT_ARCHITECTURES:
        return bert_fields(hf, arch)
    if arch == MODERNBERT:
        return modernbert_fields(hf)
    defaults = DEFAULTS[arch]
    get = lambda k: hf.get(k, defaults.get(k))  # noqa: E731
    if arch == NEOX:
        D, H = int(get("hidden_size")), int(get("num_attention_heads"))
        rope, fraction = _rope(hf, arch, int(get("max_position_embeddings")))
        act = get("hidden_act")
        acts = {"gelu": "gelu_exact", "relu": "relu", **{a: "gelu" for a in _TANH_GELU}}
        if act not in acts:
            _refuse("hidden_act", act, tuple(acts), arch)
        if get("attention_bias") is not True:
            _refuse("attention_bias", get("attention_bias"), (True,), arch)
        return dict(vocab_size=int(get("vocab_size")), d_model=D, n_head=H, n_layer=int(get("num_hidden_layers")),
                    d_ff=int(get("intermediate_size")), max_len=int(get("max_position_embeddings")),
                    norm_position="pre", norm="layernorm", norm_eps=float(get("layer_norm_eps")),
                    activation=acts[act], bias=True, qkv_bias=True, rope_fraction=fraction,
                    parallel_residual=bool(get("use_parallel_residual")),
                    tie_embeddings=bool(get("tie_word_embeddings")), dropout=0.0, **rope)
    fields = _llama_like(hf, arch, get)
    if arch in (GEMMA, GEMMA2):
        act = get("hidden_act") if arch == GEMMA else get("hidden_activation")
        key = "hidden_act" if arch == GEMMA else "hidden_activation"
        if act == "gelu" and arch == GEMMA:   # transformers reads Gemma's legacy "gelu" as the tanh GELU
            act = "gelu_pytorch_tanh"
        if act not in _TANH_GELU:
            _refuse(key, act, _TANH_GELU, arch)
        if get("use_bidirectional_attention"):
            _refuse("use_bidirectional_attention", get("use_bidirectional_attention"), (False, None), arch)
        fields.update(activation="geglu", norm_offset=1.0, scale_embeddings=True)
    elif get("hidden_act") not in ("silu", "swish"):
        _refuse("hidden_act", get("hidden_act"), ("silu",), arch)
    if arch in (LLAMA, QWEN3, GEMMA, GEMMA2) and get("attention_bias"):
        _refuse("attention_bias", get("attention_bias"), (False,), arch)   # o_proj bias without MLP biases
    if arch == LLAMA and get("mlp_bias"):
        _refuse("mlp_bias", get("mlp_bias"), (False,), arch)               # gate_proj bias has no leaf
    L = fields["n_layer"]
    if arch == MISTRAL:
        fields.update(_windows(hf, arch, L, get("sliding_window"), None))
    elif arch in (QWEN2, QWEN3):
        window = get("sliding_window") if get("use_sliding_window") else None
        types = get("layer_types")
        if window is not None and types is None:
            types = ["sliding_attention" if i >= int(get("max_window_layers")) else "full_attention"
                     for i in range(L)]
        fields.update(_windows(hf, arch, L, window, types))
        fields.update(qkv_bias=arch == QWEN2, qk_norm=arch == QWEN3)
    elif arch == GEMMA2:
        types = get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(L)]
        fields.update(_windows(hf, arch, L, get("sliding_window"), types))
        fields.update(norm_position="sandwich", attn_scale=float(get("query_pre_attn_scalar")) ** -0.5,
                      attn_softcap=get("attn_logit_softcapping"), final_softcap=get("final_logit_softcapping"))
    return fields


def model_config_from_hf_family(hf: Mapping[str, Any], architecture: Optional[str] = None,
                                **overrides) -> ModelConfig:
    """The :class:`ModelConfig` of a ``config.json`` dict of any supported architecture
    (detected when ``architecture`` is None); ``overrides`` replace fields (e.g. ``dtype``).
    Raises :class:`CheckpointError` naming the key of anything that is not supported."""
    arch = architecture or detect_architecture(hf)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
        raise ConfigError(f"config override {unknown[0]!r} is not a ModelConfig field")
    quant = hf.get("quantization_config")
    if quant:
        _refuse("quantization_config.quant_method", quant.get("quant_method") if isinstance(quant, dict) else quant,
                "none (dequantize the checkpoint first)", arch)
    if arch == GPT2:
        return hf_gpt2.model_config_from_hf(hf, **overrides)
    try:
        config = ModelConfig(**_fields(hf, arch), init_std=0.02)   # GPT-2's init, as before the width default
    except (TypeError, ValueError) as e:  # ConfigError is a ValueError
        raise CheckpointError(f"config.json does not describe a valid {arch}: {e}") from None
    return dataclasses.replace(config, **overrides) if overrides else config


# ----------------------------------------------------------------------------- writing
def infer_architecture(config: ModelConfig) -> str:
    """The Hugging Face architecture a jaxformer config is closest to (exactness is checked
    by :func:`hf_config_for`)."""
    c = config
    if not c.causal and c.positions == "rope":
        return MODERNBERT
    if not c.causal:
        return ROBERTA if c.position_offset else BERT
    if c.positions == "learned":
        return GPT2
    if c.norm == "layernorm":
        return NEOX
    if c.norm_offset != 0.0 or c.activation == "geglu" or c.scale_embeddings:
        sandwich = c.norm_position == "sandwich" or c.attn_softcap or c.final_softcap or any(c.sliding_layers)
        return GEMMA2 if sandwich else GEMMA
    if c.qk_norm:
        return QWEN3
    if c.qkv_bias and not c.bias:
        return QWEN2
    return MISTRAL if any(c.sliding_layers) else LLAMA


def _rope_out(c: ModelConfig, arch: str) -> dict:
    params: Dict[str, Any] = {"rope_type": "default" if c.rope_scaling == "none" else c.rope_scaling,
                              "rope_theta": c.rope_theta}
    if c.rope_scaling != "none":
        params["factor"] = c.rope_scaling_factor
    if c.rope_scaling == "llama3":
        params.update(low_freq_factor=c.rope_low_freq_factor, high_freq_factor=c.rope_high_freq_factor,
                      original_max_position_embeddings=c.rope_original_max_len)
    if arch == NEOX:
        params["partial_rotary_factor"] = c.rope_fraction
        return {"rope_parameters": params, "rotary_pct": c.rope_fraction, "rotary_emb_base": c.rope_theta}
    legacy = None if c.rope_scaling == "none" else {k: v for k, v in params.items() if k != "rope_theta"}
    return {"rope_parameters": params, "rope_theta": c.rope_theta, "rope_scaling": legacy}


def _types_out(c: ModelConfig) -> list:
    return ["sliding_attention" if s else "full_attention" for s in c.sliding_layers]


def _canonical(c: ModelConfig) -> dict:
    """The fields that decide what a config computes, in one normal form."""
    skip = {"dtype", "param_dtype", "scan_layers", "remat", "kernels", "init_std", "dropout"}
    d = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name not in skip}
    d.update(n_kv_head=c.kv_heads, layer_types=c.sliding_layers,
             sliding_window=c.sliding_window if any(c.sliding_layers) else None,
             attn_scale=c.head_dim ** -0.5 if c.attn_scale is None else c.attn_scale)
    rope = ("rope_theta", "rope_fraction", "rope_scaling", "rope_scaling_factor", "rope_low_freq_factor",
            "rope_high_freq_factor", "rope_original_max_len")
    drop = rope if c.positions != "rope" else rope[4:] if c.rope_scaling != "llama3" else ()
    if c.positions == "rope" and c.rope_scaling == "none":
        drop += ("rope_scaling_factor",)
    return {k: v for k, v in d.items() if k not in drop}


def hf_config_for(config: ModelConfig, architecture: Optional[str] = None) -> Dict[str, Any]:
    """A ``config.json`` dict of ``architecture`` (default: :func:`infer_architecture`) that
    describes exactly ``config``. Raises :class:`ConfigError` naming the first field the
    architecture cannot express."""
    c = config
    arch = architecture or infer_architecture(c)
    if arch not in ARCHITECTURES:
        raise ConfigError(f"architecture={arch!r} is not one of {', '.join(map(repr, ARCHITECTURES))}")
    if arch == GPT2:
        hf = hf_gpt2.hf_config_from_model(c)
        _check_same(c, hf, arch)
        return hf
    if arch in BERT_ARCHITECTURES or arch == MODERNBERT:
        hf = bert_hf_config(c, arch) if arch != MODERNBERT else modernbert_hf_config(c)
        _check_same(c, hf, arch)
        return hf
    hf: Dict[str, Any] = {
        "architectures": [arch], "model_type": MODEL_TYPES[arch], "vocab_size": c.vocab_size,
        "hidden_size": c.d_model, "intermediate_size": c.d_ff, "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head, "max_position_embeddings": c.max_len,
        "tie_word_embeddings": c.tie_embeddings, "initializer_range": c.init_std,
        "attention_dropout": 0.0, "use_cache": True, "bos_token_id": None, "eos_token_id": None,
        "pad_token_id": None, "dtype": "float32", **_rope_out(c, arch)}
    if arch == NEOX:
        hf.update(hidden_act={"gelu_exact": "gelu", "gelu": "gelu_new"}.get(c.activation, c.activation),
                  layer_norm_eps=c.norm_eps, use_parallel_residual=c.parallel_residual,
                  attention_bias=c.qkv_bias, hidden_dropout=0.0)
    else:
        hf.update(num_key_value_heads=c.kv_heads, head_dim=c.head_dim, rms_norm_eps=c.norm_eps,
                  hidden_act="silu")
    if arch in (LLAMA, QWEN3, GEMMA, GEMMA2):
        hf["attention_bias"] = False
    if arch == LLAMA:
        hf["mlp_bias"] = False
    if arch == MISTRAL:
        hf["sliding_window"] = c.sliding_window
    if arch in (QWEN2, QWEN3):
        sliding = c.sliding_layers
        first = sliding.index(True) if any(sliding) else c.n_layer
        hf.update(use_sliding_window=any(sliding), sliding_window=c.sliding_window if any(sliding) else None,
                  max_window_layers=first, layer_types=_types_out(c))
    if arch in (GEMMA, GEMMA2):
        hf.update(hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh")
    if arch == GEMMA2:
        scalar = round((c.attn_scale or c.head_dim ** -0.5) ** -2)
        hf.update(query_pre_attn_scalar=scalar, sliding_window=c.sliding_window,
                  layer_types=_types_out(c), attn_logit_softcapping=c.attn_softcap,
                  final_logit_softcapping=c.final_softcap, cache_implementation="hybrid")
    _check_same(c, hf, arch)
    return hf


def _check_same(c: ModelConfig, hf: Dict[str, Any], arch: str) -> None:
    try:
        back = model_config_from_hf_family(hf, arch)
    except CheckpointError as e:
        raise ConfigError(f"this model cannot be exported to {arch}: {e}") from None
    ours, theirs = _canonical(c), _canonical(back)
    for name in ours:
        if ours[name] != theirs.get(name):
            raise ConfigError(f"model.{name}={getattr(c, name)!r} cannot be exported to {arch} "
                              f"(allowed: {getattr(back, name)!r})")
