"""Hugging Face tensor names <-> jaxformer's parameter pytree, per architecture, streamed.

A :class:`Layout` is a list of :class:`Rule` s. A rule ties one or more HF tensors of a layer
(names with ``{i}``) to one or more jaxformer leaves (``"blocks/attn/wq"``; leaves under
``blocks/`` are stacked on a leading ``[L]`` axis) by a pair of pure NumPy functions, ``load``
(HF arrays of one layer -> our arrays) and ``save`` (the inverse). The tables, per block ``i``
(HF ``nn.Linear`` weights are ``[out, in]``; ours ``[in, out...]``)::

    Llama / Mistral / Qwen2 / Qwen3 / Gemma / Gemma2 (prefix "model.")
      layers.i.input_layernorm.weight                -> blocks.ln1.scale
      layers.i.post_attention_layernorm.weight       -> blocks.ln2.scale   (Gemma2: ln_attn_out)
      layers.i.pre_feedforward_layernorm.weight      -> blocks.ln2.scale   (Gemma2)
      layers.i.post_feedforward_layernorm.weight     -> blocks.ln_mlp_out.scale (Gemma2)
      layers.i.self_attn.{q,k,v}_proj.weight [HK,D]  -> blocks.attn.w{q,k,v} [D,H,K] (.T, reshape)
      layers.i.self_attn.{q,k,v}_proj.bias   [HK]    -> blocks.attn.b{q,k,v} [H,K]  (Qwen2)
      layers.i.self_attn.{q,k}_norm.weight   [K]     -> blocks.attn.{q,k}_norm.scale (Qwen3)
      layers.i.self_attn.o_proj.weight       [D,HK]  -> blocks.attn.wo [H,K,D]
      layers.i.mlp.{gate,up,down}_proj.weight        -> blocks.mlp.{w_gate,w_in,w_out} (.T)
      embed_tokens.weight -> tok_emb; norm.weight -> ln_f.scale; lm_head.weight [V,D] -> lm_head [D,V]
    GPT-NeoX (prefix "gpt_neox.")
      layers.i.{input,post_attention}_layernorm.{weight,bias} -> blocks.ln{1,2}.{scale,bias}
      layers.i.attention.query_key_value.weight [3HK,D] -> wq, wk, wv: rows are per head
                                                           [q|k|v] chunks ([H,3,K,D])
      layers.i.attention.query_key_value.bias   [3HK]   -> bq, bk, bv ([H,3,K])
      layers.i.attention.dense.{weight,bias}            -> wo, bo
      layers.i.mlp.dense_h_to_4h / dense_4h_to_h        -> w_in, b_in / w_out, b_out
      embed_in.weight -> tok_emb; final_layer_norm -> ln_f; embed_out.weight (or lm_head.weight) -> lm_head
    GPT-2: see hf_gpt2.py (prefix "transformer."); BERT, RoBERTa, XLM-R: see hf_bert.py

Buffers older checkpoints carry (``rotary_emb.inv_freq``, GPT-NeoX/GPT-2 ``attention.bias`` /
``masked_bias``) are skipped. A tied head (``tie_word_embeddings``) may be absent or present
(then it must equal the embeddings).

:func:`load_params` builds each leaf on the device in the target dtype, one HF tensor at a
time: each leaf is filled in one 64-byte-aligned host buffer of the target dtype (stacked
leaves layer by layer, embeddings and heads in row chunks) that ``jax.device_put`` adopts
without a copy on the CPU (on an accelerator it is copied, then freed), so the host never
holds more than the model plus one leaf.
"""
from __future__ import annotations

import re
from typing import Dict, Iterator, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer.config import ModelConfig
from jaxformer.errors import CheckpointError
from jaxformer.interop.hf_bert import BERT_ARCHITECTURES, bert_layout
from jaxformer.interop.hf_modernbert import MODERNBERT, modernbert_layout
from jaxformer.interop.hf_families import GEMMA2, GPT2, NEOX
from jaxformer.interop.hf_rules import Layout, Rule  # noqa: F401 (Rule: part of this module's table API)
from jaxformer.interop.hf_rules import bias_heads as _bias_heads, copy as _copy, heads_in as _heads_in
from jaxformer.interop.hf_rules import heads_out as _heads_out, linear as _linear, norm_rules as _norm
from jaxformer.interop.hf_tensors import TensorSource
from jaxformer.model.modules import model_class

__all__ = ["Rule", "Layout", "layout_for", "load_params", "iter_hf_tensors", "hf_specs"]


def _llama_layout(c: ModelConfig, arch: str) -> Layout:
    H, G, p = c.n_head, c.kv_heads, "model."
    a, m = p + "layers.{i}.self_attn.", p + "layers.{i}.mlp."
    rules = [_copy("tok_emb", p + "embed_tokens.weight"),
             _copy("blocks/ln1/scale", p + "layers.{i}.input_layernorm.weight")]
    if arch == GEMMA2:
        rules += [_copy("blocks/ln_attn_out/scale", p + "layers.{i}.post_attention_layernorm.weight"),
                  _copy("blocks/ln2/scale", p + "layers.{i}.pre_feedforward_layernorm.weight"),
                  _copy("blocks/ln_mlp_out/scale", p + "layers.{i}.post_feedforward_layernorm.weight")]
    else:
        rules.append(_copy("blocks/ln2/scale", p + "layers.{i}.post_attention_layernorm.weight"))
    rules += [_heads_in("blocks/attn/wq", a + "q_proj.weight", H),
              _heads_in("blocks/attn/wk", a + "k_proj.weight", G),
              _heads_in("blocks/attn/wv", a + "v_proj.weight", G),
              _heads_out("blocks/attn/wo", a + "o_proj.weight", H)]
    if c.qkv_bias:
        rules += [_bias_heads(f"blocks/attn/b{n}", a + f"{n}_proj.bias", k) for n, k in (("q", H), ("k", G), ("v", G))]
    if c.bias:
        rules.append(_copy("blocks/attn/bo", a + "o_proj.bias"))
    if c.qk_norm:
        rules += [_copy("blocks/attn/q_norm/scale", a + "q_norm.weight"),
                  _copy("blocks/attn/k_norm/scale", a + "k_norm.weight")]
    rules += [_linear("blocks/mlp/w_gate", m + "gate_proj.weight"), _linear("blocks/mlp/w_in", m + "up_proj.weight"),
              _linear("blocks/mlp/w_out", m + "down_proj.weight"), _copy("ln_f/scale", p + "norm.weight")]
    if not c.tie_embeddings:
        rules.append(_linear("lm_head", "lm_head.weight"))
    return Layout(p, rules, re.compile(r"^(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq$"),
                  head="lm_head.weight", embeddings=p + "embed_tokens.weight")


def _neox_qkv(H: int, weight: bool) -> tuple:
    def load(w):   # [H*3*K, D] (or [H*3*K]) -> per head [q|k|v] chunks
        w = w.reshape(H, 3, -1, *w.shape[1:])
        return tuple(np.moveaxis(w[:, j], -1, 0) if weight else w[:, j] for j in range(3))

    def save(*qkv):
        parts = [np.moveaxis(x, 0, -1) if weight else x for x in qkv]   # [H, K, D] / [H, K]
        s = np.stack(parts, axis=1)
        return (s.reshape(-1, s.shape[-1]) if weight else s.reshape(-1),)
    return load, save


def _neox_layout(c: ModelConfig) -> Layout:
    H, p = c.n_head, "gpt_neox."
    b, a, m = p + "layers.{i}.", p + "layers.{i}.attention.", p + "layers.{i}.mlp."
    rules = [_copy("tok_emb", p + "embed_in.weight"),
             *_norm("blocks/ln1", b + "input_layernorm", True),
             *_norm("blocks/ln2", b + "post_attention_layernorm", True),
             Rule(("blocks/attn/wq", "blocks/attn/wk", "blocks/attn/wv"), (a + "query_key_value.weight",),
                  *_neox_qkv(H, True)),
             Rule(("blocks/attn/bq", "blocks/attn/bk", "blocks/attn/bv"), (a + "query_key_value.bias",),
                  *_neox_qkv(H, False)),
             _heads_out("blocks/attn/wo", a + "dense.weight", H), _copy("blocks/attn/bo", a + "dense.bias"),
             _linear("blocks/mlp/w_in", m + "dense_h_to_4h.weight"), _copy("blocks/mlp/b_in", m + "dense_h_to_4h.bias"),
             _linear("blocks/mlp/w_out", m + "dense_4h_to_h.weight"), _copy("blocks/mlp/b_out", m + "dense_4h_to_h.bias"),
             *_norm("ln_f", p + "final_layer_norm", True)]
    if not c.tie_embeddings:
        rules.append(_linear("lm_head", "embed_out.weight"))
    skip = re.compile(r"^(layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)|rotary_emb\.inv_freq)$")
    return Layout(p, rules, skip, head="embed_out.weight", embeddings=p + "embed_in.weight",
                  aliases={"lm_head.weight": "embed_out.weight"})


def _gpt2_layout(c: ModelConfig) -> Layout:
    H, D, p = c.n_head, c.d_model, "transformer."
    b = p + "h.{i}."

    def split(w):     # [D, 3D] -> 3 x [D, H, K]; [3D] -> 3 x [H, K]
        return tuple(x.reshape(*x.shape[:-1], H, -1) for x in np.split(w, 3, axis=-1))

    def join(*qkv):
        return (np.concatenate([x.reshape(*x.shape[:-2], -1) for x in qkv], axis=-1),)
    rules = [_copy("tok_emb", p + "wte.weight"), _copy("pos_emb", p + "wpe.weight"),
             *_norm("blocks/ln1", b + "ln_1", True), *_norm("blocks/ln2", b + "ln_2", True),
             Rule(("blocks/attn/wq", "blocks/attn/wk", "blocks/attn/wv"), (b + "attn.c_attn.weight",), split, join),
             Rule(("blocks/attn/bq", "blocks/attn/bk", "blocks/attn/bv"), (b + "attn.c_attn.bias",), split, join),
             Rule(("blocks/attn/wo",), (b + "attn.c_proj.weight",), lambda w: (w.reshape(H, -1, D),),
                  lambda a: (a.reshape(-1, D),)),
             _copy("blocks/attn/bo", b + "attn.c_proj.bias"),
             _copy("blocks/mlp/w_in", b + "mlp.c_fc.weight"), _copy("blocks/mlp/b_in", b + "mlp.c_fc.bias"),
             _copy("blocks/mlp/w_out", b + "mlp.c_proj.weight"), _copy("blocks/mlp/b_out", b + "mlp.c_proj.bias"),
             *_norm("ln_f", p + "ln_f", True)]
    if not c.tie_embeddings:
        rules.append(_linear("lm_head", "lm_head.weight"))
    return Layout(p, rules, re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$"), head="lm_head.weight",
                  embeddings=p + "wte.weight")


def layout_for(architecture: str, config: ModelConfig) -> Layout:
    """The tensor table of ``architecture`` for ``config``."""
    if architecture == GPT2:
        return _gpt2_layout(config)
    if architecture == NEOX:
        return _neox_layout(config)
    if architecture in BERT_ARCHITECTURES:
        return bert_layout(config, architecture)
    if architecture == MODERNBERT:
        return modernbert_layout(config)
    return _llama_layout(config, architecture)


# ----------------------------------------------------------------------------- shapes
def _flat(tree, prefix="") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _unflat(flat: dict) -> dict:
    tree: dict = {}
    for k, v in flat.items():
        *head, last = k.split("/")
        node = tree
        for h in head:
            node = node.setdefault(h, {})
        node[last] = v
    return tree


def _our_shapes(config: ModelConfig) -> Dict[str, tuple]:
    """Every leaf of jaxformer's parameter tree for ``config`` with its shape (no memory)."""
    return {k: tuple(v.shape) for k, v in _flat(model_class(config).abstract(config).params()).items()}


def _layer_names(rule: Rule, i: int) -> List[str]:
    return [n.format(i=i) for n in rule.hf]


def hf_specs(layout: Layout, config: ModelConfig) -> Dict[str, tuple]:
    """Every HF tensor name of ``layout`` with its shape, in file order (layer by layer),
    checking that the rules cover jaxformer's parameter tree exactly."""
    ours = _our_shapes(config)
    covered = [o for r in layout.rules for o in r.ours]
    if sorted(covered) != sorted(ours):
        raise CheckpointError(f"the tensor table does not match jaxformer's parameters for this config: "
                              f"table-only {sorted(set(covered) - set(ours))}, "
                              f"parameter-only {sorted(set(ours) - set(covered))}")
    specs: Dict[str, tuple] = {}
    flat_rules = [r for r in layout.rules if not r.stacked]
    for r in [r for r in flat_rules if r.ours[0] == "tok_emb" or r.ours[0] == "pos_emb"]:
        specs.update(_rule_shapes(r, ours, None))
    for i in range(config.n_layer):
        for r in (r for r in layout.rules if r.stacked and i >= r.first_layer):
            specs.update(_rule_shapes(r, ours, i))
    for r in flat_rules:
        if r.ours[0] not in ("tok_emb", "pos_emb"):
            specs.update(_rule_shapes(r, ours, None))
    return specs


def _rule_shapes(rule: Rule, ours: Dict[str, tuple], i: Optional[int]) -> Dict[str, tuple]:
    fakes = [np.broadcast_to(np.float32(0), ours[o][1:] if i is not None else ours[o]) for o in rule.ours]
    outs = rule.save(*fakes)
    return {n: tuple(a.shape) for n, a in zip(_layer_names(rule, 0 if i is None else i), outs)}


# ----------------------------------------------------------------------------- loading
def _listing(names, limit: int = 12) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _match_names(source: TensorSource, layout: Layout, specs: Dict[str, tuple], config: ModelConfig,
                 arch: str) -> Dict[str, str]:
    """canonical name -> name in the file; raises on unknown, missing or misshapen tensors."""
    optional_head = layout.head if config.tie_embeddings else None

    def canonical(name):
        for cand in (name, layout.prefix + name):
            cand = layout.aliases.get(cand, cand)
            if cand in specs or cand == optional_head or cand in layout.duplicates:
                return cand
        return None

    found: Dict[str, str] = {}
    unknown = []
    for name in source.names():
        canon = canonical(name)
        if canon is None:
            if not (layout.skip and layout.skip.match(layout.display(name))):
                unknown.append(layout.display(name))
        elif canon in found:
            raise CheckpointError(f"tensors {found[canon]!r} and {name!r} are both {layout.display(canon)!r}")
        else:
            found[canon] = name
    missing = [layout.display(n) for n in specs if n not in found]
    if unknown or missing:
        parts = ([f"unknown tensors: {_listing(unknown)}"] if unknown else []) + \
                ([f"missing tensors: {_listing(missing)}"] if missing else [])
        raise CheckpointError(f"{arch} checkpoint does not match its config.json: " + "; ".join(parts))
    for canon, name in found.items():
        want = specs.get(layout.duplicates.get(canon, canon)) or (config.vocab_size, config.d_model)
        if tuple(source.shapes[name]) != want:
            raise CheckpointError(f"tensor {layout.display(canon)!r} has shape {tuple(source.shapes[name])}, "
                                  f"expected {want} from config.json")
        if not np.issubdtype(source.dtypes[name], np.floating) and source.dtypes[name].kind != "V":
            raise CheckpointError(f"tensor {layout.display(canon)!r} has dtype {source.dtypes[name]}, "
                                  "expected a floating-point type")
    return found


def _check_tied(source: TensorSource, head: str, emb: str, rows: int = 4096) -> None:
    n = source.shapes[emb][0]
    for s in range(0, n, rows):
        if not np.array_equal(source.read(head, slice(s, s + rows)), source.read(emb, slice(s, s + rows))):
            raise CheckpointError(f"tensor {head!r} differs from {emb!r} but config.json has "
                                  "tie_word_embeddings=true")


def aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    """An uninitialised array whose data is ``align``-byte aligned: ``jax.device_put`` on the
    CPU then adopts its memory instead of copying it."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(n + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset:offset + n].view(dtype).reshape(shape)


_CHUNK_BYTES = 32 * 2**20


def _fill_flat(buf: np.ndarray, rule: Rule, source: TensorSource, name: str) -> None:
    """Fill a leaf that is not stacked, reading its HF tensor ``_CHUNK_BYTES`` of rows at a time
    when the rule maps rows to one of our axes (embeddings, heads), else whole."""
    shape = source.shapes[name]
    if rule.rows_axis is None or not shape:
        (buf[...],) = rule.load(source.read(name))
        return
    row_bytes = max(1, int(np.prod(shape[1:])) * source.dtypes[name].itemsize)
    step = max(1, _CHUNK_BYTES // row_bytes)
    for s in range(0, shape[0], step):
        index = [slice(None)] * buf.ndim
        index[rule.rows_axis] = slice(s, s + step)
        (buf[tuple(index)],) = rule.load(source.read(name, slice(s, s + step)))


def load_params(source: TensorSource, architecture: str, config: ModelConfig, dtype="float32") -> dict:
    """jaxformer's parameter pytree (``jax.Array`` leaves of ``dtype`` on the default device)
    from the tensors of ``source``, read one at a time. Raises :class:`CheckpointError`
    listing unknown and missing tensors, or naming a tensor whose shape disagrees.

    Each leaf is assembled in one aligned host buffer of the target dtype (stacked leaves
    layer by layer, embeddings and heads in row chunks), then handed to ``jax.device_put``:
    on the CPU the array adopts that buffer (no copy), on an accelerator the buffer is copied
    and freed. So the host holds the model plus one leaf at most (on the CPU: the model plus
    one tensor).
    """
    layout = layout_for(architecture, config)
    specs = hf_specs(layout, config)
    found = _match_names(source, layout, specs, config, architecture)
    ours = _our_shapes(config)
    dt = np.dtype(jnp.dtype(dtype))
    leaves = {}
    for rule in layout.rules:
        bufs = [aligned_empty(ours[o], dt) for o in rule.ours]
        if rule.stacked:
            for i in range(config.n_layer):
                if i < rule.first_layer:
                    for b in bufs:
                        b[i] = rule.filler
                    continue
                outs = rule.load(*(source.read(found[n]) for n in _layer_names(rule, i)))
                for b, x in zip(bufs, outs):
                    b[i] = x
        else:
            _fill_flat(bufs[0], rule, source, found[rule.hf[0]])
        leaves.update((o, jax.device_put(b)) for o, b in zip(rule.ours, bufs))
        jax.block_until_ready([leaves[o] for o in rule.ours])
        del bufs
    if config.tie_embeddings and layout.head in found:
        _check_tied(source, found[layout.head], found[layout.embeddings])
    for copy_name, name in layout.duplicates.items():   # e.g. BERT's decoder.bias, tied to the head's bias
        if copy_name in found and not np.array_equal(source.read(found[copy_name]), source.read(found[name])):
            raise CheckpointError(f"tensor {copy_name!r} differs from {name!r}, which it is tied to")
    return _unflat(leaves)


# ----------------------------------------------------------------------------- export
def iter_hf_tensors(params: dict, layout: Layout, config: ModelConfig) -> Iterator[Tuple[str, np.ndarray]]:
    """``(HF name, NumPy array)`` for every tensor of ``layout``, one leaf on the host at a time."""
    flat = _flat(params)
    for rule in layout.rules:
        host = [np.asarray(flat[o]) for o in rule.ours]
        if not rule.stacked:
            yield from zip(_layer_names(rule, 0), rule.save(*host))
            continue
        for i in range(rule.first_layer, config.n_layer):
            yield from zip(_layer_names(rule, i), rule.save(*(h[i] for h in host)))
