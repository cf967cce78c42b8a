"""GPT-2 <-> jaxformer: the configuration and tensor-name mapping, as pure NumPy functions.

Hugging Face's GPT-2 stores its projections as ``Conv1D`` weights of shape ``[in, out]``
(``y = x @ W + b``), which is already jaxformer's ``x @ W`` convention, so no matrix is
transposed; heads are only reshaped. Per block ``i`` (``D`` width, ``H`` heads, ``K = D/H``,
``F`` MLP width; names may carry a ``transformer.`` prefix)::

    h.i.ln_1.weight / .bias          [D]        -> blocks.ln1.scale / .bias       [i]
    h.i.attn.c_attn.weight           [D, 3D]    -> blocks.attn.wq, wk, wv [D, H, K] (split q|k|v)
    h.i.attn.c_attn.bias             [3D]       -> blocks.attn.bq, bk, bv [H, K]
    h.i.attn.c_proj.weight / .bias   [D, D],[D] -> blocks.attn.wo [H, K, D], bo [D]
    h.i.ln_2.weight / .bias          [D]        -> blocks.ln2.scale / .bias
    h.i.mlp.c_fc.weight / .bias      [D, F],[F] -> blocks.mlp.w_in, b_in
    h.i.mlp.c_proj.weight / .bias    [F, D],[D] -> blocks.mlp.w_out, b_out
    wte.weight [V, D] -> tok_emb     wpe.weight [P, D] -> pos_emb     ln_f.* -> ln_f.*
    lm_head.weight [V, D]: tied to wte (checked equal when present) or, untied, -> lm_head [D, V]

``h.i.attn.bias`` / ``h.i.attn.masked_bias`` (the causal-mask buffers older checkpoints
carry) are recognised and skipped. Every other unknown name, every missing name and every
shape disagreement raises :class:`CheckpointError` listing them.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping

import numpy as np

from jaxformer.config import ModelConfig
from jaxformer.errors import CheckpointError, ConfigError

__all__ = ["model_config_from_hf", "hf_config_from_model", "params_from_hf", "hf_from_params",
           "HF_PREFIX"]

HF_PREFIX = "transformer."
# Hugging Face activation names that are exactly jaxformer's tanh-approximated GELU / ReLU.
_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu",
                "relu": "relu"}
_BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
_BLOCK_NAMES = {  # HF suffix -> (jaxformer group, jaxformer leaf)
    "ln_1.weight": ("ln1", "scale"), "ln_1.bias": ("ln1", "bias"),
    "ln_2.weight": ("ln2", "scale"), "ln_2.bias": ("ln2", "bias"),
    "attn.c_proj.weight": ("attn", "wo"), "attn.c_proj.bias": ("attn", "bo"),
    "mlp.c_fc.weight": ("mlp", "w_in"), "mlp.c_fc.bias": ("mlp", "b_in"),
    "mlp.c_proj.weight": ("mlp", "w_out"), "mlp.c_proj.bias": ("mlp", "b_out"),
}


# ----------------------------------------------------------------------------- configs
def model_config_from_hf(hf: Mapping[str, Any], **overrides) -> ModelConfig:
    """The :class:`ModelConfig` of a GPT-2 ``config.json`` (a dict).

    Pre-norm, learned positions, biases, GELU (tanh approximation), layer-norm epsilon
    ``layer_norm_epsilon`` and ``d_ff = n_inner or 4 * n_embd``. Variants jaxformer cannot
    compute exactly (cross-attention, per-layer attention scaling, other activations) raise
    :class:`CheckpointError`. ``overrides`` replace ModelConfig fields (e.g. ``dtype``).
    """
    get = lambda k, d=None: hf.get(k, d)  # noqa: E731
    model_type = get("model_type", "gpt2")
    if model_type != "gpt2":
        raise CheckpointError(f"config.json model_type={model_type!r} is not supported (allowed: 'gpt2')")
    act = get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise CheckpointError(f"config.json activation_function={act!r} is not supported "
                              f"(allowed: {', '.join(map(repr, _ACTIVATIONS))})")
    for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                    ("add_cross_attention", False)):
        if bool(get(key, ok)) != ok:
            raise CheckpointError(f"config.json {key}={get(key)!r} is not supported (allowed: {ok})")
    try:
        d_model = int(get("n_embd", 768))
        fields = dict(
            vocab_size=int(get("vocab_size", 50257)), d_model=d_model,
            n_head=int(get("n_head", 12)), n_layer=int(get("n_layer", 12)),
            d_ff=int(get("n_inner") or 4 * d_model), max_len=int(get("n_positions", 1024)),
            norm_position="pre", norm="layernorm", norm_eps=float(get("layer_norm_epsilon", 1e-5)),
            activation=_ACTIVATIONS[act], positions="learned", bias=True,
            tie_embeddings=bool(get("tie_word_embeddings", True)), dropout=0.0, init_std=0.02)
        fields.update(overrides)
        return ModelConfig(**fields)
    except (TypeError, ValueError) as e:  # ConfigError is a ValueError
        raise CheckpointError(f"config.json does not describe a valid GPT-2: {e}") from None


def hf_config_from_model(config: ModelConfig) -> Dict[str, Any]:
    """A GPT-2 ``config.json`` dict for a jaxformer ModelConfig (raises ConfigError if the
    architecture is not GPT-2's: it must be pre-norm layernorm with biases, learned positions,
    gelu or relu and no grouped-query attention)."""
    required = {"norm_position": "pre", "norm": "layernorm", "positions": "learned", "bias": True}
    for name, want in required.items():
        if getattr(config, name) != want:
            raise ConfigError(f"model.{name}={getattr(config, name)!r} cannot be exported to GPT-2 "
                              f"(allowed: {want!r})")
    if config.activation not in ("gelu", "relu"):
        raise ConfigError(f"model.activation={config.activation!r} cannot be exported to GPT-2 "
                          "(allowed: 'gelu', 'relu')")
    if config.kv_heads != config.n_head:
        raise ConfigError(f"model.n_kv_head={config.n_kv_head!r} cannot be exported to GPT-2 "
                          f"(allowed: null or {config.n_head})")
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.max_len, "n_embd": config.d_model,
        "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": config.d_ff,
        "activation_function": "gelu_new" if config.activation == "gelu" else "relu",
        "layer_norm_epsilon": config.norm_eps, "initializer_range": config.init_std,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": config.vocab_size - 1, "eos_token_id": config.vocab_size - 1,
        "torch_dtype": "float32", "use_cache": True,
    }


# ----------------------------------------------------------------------------- tensors
def _expected_shapes(c: ModelConfig) -> Dict[str, tuple]:
    """Every HF tensor name (without prefix) a GPT-2 of config ``c`` has, with its shape."""
    D, F, V, P = c.d_model, c.d_ff, c.vocab_size, c.max_len
    shapes = {"wte.weight": (V, D), "wpe.weight": (P, D), "ln_f.weight": (D,), "ln_f.bias": (D,)}
    per_block = {"ln_1.weight": (D,), "ln_1.bias": (D,), "ln_2.weight": (D,), "ln_2.bias": (D,),
                 "attn.c_attn.weight": (D, 3 * D), "attn.c_attn.bias": (3 * D,),
                 "attn.c_proj.weight": (D, D), "attn.c_proj.bias": (D,),
                 "mlp.c_fc.weight": (D, F), "mlp.c_fc.bias": (F,),
                 "mlp.c_proj.weight": (F, D), "mlp.c_proj.bias": (D,)}
    for i in range(c.n_layer):
        shapes.update({f"h.{i}.{k}": s for k, s in per_block.items()})
    if not c.tie_embeddings:
        shapes["lm_head.weight"] = (V, D)
    return shapes


def _strip(name: str) -> str:
    return name[len(HF_PREFIX):] if name.startswith(HF_PREFIX) else name


def _listing(names, limit: int = 12) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def params_from_hf(state: Mapping[str, Any], config: ModelConfig, dtype=np.float32) -> dict:
    """Map a GPT-2 state dict (name -> array-like) onto jaxformer's parameter pytree.

    Returns NumPy arrays of ``dtype`` laid out as in ``functional.py``'s legend (blocks
    stacked on a leading ``[L]`` axis). Raises :class:`CheckpointError` listing unknown and
    missing tensors, or naming a tensor whose shape disagrees (expected and found).
    """
    c, H, K = config, config.n_head, config.head_dim
    tensors = {}
    for name, value in state.items():
        key = _strip(name)
        if _BUFFERS.match(key):
            continue
        tensors[key] = value
    expected = _expected_shapes(c)
    if c.tie_embeddings and "lm_head.weight" in tensors:
        expected["lm_head.weight"] = (c.vocab_size, c.d_model)
    unknown = set(tensors) - set(expected)
    missing = set(expected) - set(tensors) - ({"lm_head.weight"} if c.tie_embeddings else set())
    if unknown or missing:
        parts = ([f"unknown tensors: {_listing(unknown)}"] if unknown else []) + \
                ([f"missing tensors: {_listing(missing)}"] if missing else [])
        raise CheckpointError("GPT-2 checkpoint does not match its config.json: " + "; ".join(parts))
    arrays = {}
    for key, value in tensors.items():
        a = np.asarray(value)
        if a.shape != expected[key]:
            raise CheckpointError(f"tensor {key!r} has shape {tuple(a.shape)}, expected "
                                  f"{expected[key]} from config.json")
        arrays[key] = a.astype(dtype, copy=False)

    def stack(suffix):
        return np.stack([arrays[f"h.{i}.{suffix}"] for i in range(c.n_layer)])

    L, D = c.n_layer, c.d_model
    blocks: Dict[str, Dict[str, np.ndarray]] = {"ln1": {}, "ln2": {}, "attn": {}, "mlp": {}}
    for suffix, (group, leaf) in _BLOCK_NAMES.items():
        blocks[group][leaf] = stack(suffix)
    blocks["attn"]["wo"] = blocks["attn"]["wo"].reshape(L, H, K, D)
    w_qkv = np.split(stack("attn.c_attn.weight"), 3, axis=-1)   # 3 x [L, D, D]
    b_qkv = np.split(stack("attn.c_attn.bias"), 3, axis=-1)     # 3 x [L, D]
    for i, n in enumerate("qkv"):
        blocks["attn"][f"w{n}"] = w_qkv[i].reshape(L, D, H, K)
        blocks["attn"][f"b{n}"] = b_qkv[i].reshape(L, H, K)
    params = {"tok_emb": arrays["wte.weight"], "pos_emb": arrays["wpe.weight"], "blocks": blocks,
              "ln_f": {"scale": arrays["ln_f.weight"], "bias": arrays["ln_f.bias"]}}
    if c.tie_embeddings:
        if "lm_head.weight" in arrays and not np.array_equal(arrays["lm_head.weight"], arrays["wte.weight"]):
            raise CheckpointError("tensor 'lm_head.weight' differs from 'wte.weight' but config.json "
                                  "has tie_word_embeddings=true")
    else:
        params["lm_head"] = np.ascontiguousarray(arrays["lm_head.weight"].T)
    return params


def hf_from_params(params: Mapping[str, Any], config: ModelConfig,
                   prefix: str = HF_PREFIX) -> Dict[str, np.ndarray]:
    """The inverse of :func:`params_from_hf`: jaxformer pytree -> GPT-2 state dict of float32
    NumPy arrays named as ``GPT2LMHeadModel.save_pretrained`` names them (``transformer.``
    prefix; ``lm_head.weight`` only when embeddings are untied)."""
    c, L, D = config, config.n_layer, config.d_model
    f32 = lambda a: np.ascontiguousarray(np.asarray(a, np.float32))  # noqa: E731
    b = params["blocks"]
    out = {"wte.weight": f32(params["tok_emb"]), "wpe.weight": f32(params["pos_emb"]),
           "ln_f.weight": f32(params["ln_f"]["scale"]), "ln_f.bias": f32(params["ln_f"]["bias"])}
    qkv_w = np.concatenate([np.asarray(b["attn"][f"w{n}"]).reshape(L, D, D) for n in "qkv"], -1)
    qkv_b = np.concatenate([np.asarray(b["attn"][f"b{n}"]).reshape(L, D) for n in "qkv"], -1)
    for i in range(L):
        for suffix, (group, leaf) in _BLOCK_NAMES.items():
            a = np.asarray(b[group][leaf][i])
            out[f"h.{i}.{suffix}"] = f32(a.reshape(D, D) if leaf == "wo" else a)
        out[f"h.{i}.attn.c_attn.weight"] = f32(qkv_w[i])
        out[f"h.{i}.attn.c_attn.bias"] = f32(qkv_b[i])
    out = {prefix + k: v for k, v in out.items()}
    if not c.tie_embeddings:
        out["lm_head.weight"] = f32(np.asarray(params["lm_head"]).T)
    return out
