"""Reading and writing Hugging Face model folders: :func:`load_hf` and :func:`save_hf`.

A folder holds ``config.json`` and the weights as ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``) or ``pytorch_model.bin`` (read with
``torch.load(weights_only=True)``, never plain pickle), plus optionally the tokenizer
(``tokenizer.json``, or GPT-2's ``vocab.json`` + ``merges.txt``). A name instead of a path is
looked up in the local Hugging Face cache only (no network). The architectures and their
config mapping are in ``hf_families.py``, the tensor tables in ``hf_layouts.py``, the
tokenizer's BOS / EOS settings in ``hf_tokenizer.py``.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Dict, Optional

import jax.numpy as jnp
import numpy as np

from jaxformer.config import DTYPES
from jaxformer.errors import CheckpointError, ConfigError
from jaxformer.interop.hf_families import (GPT2, detect_architecture, hf_config_for,
                                           model_config_from_hf_family)
from jaxformer.interop.hf_layouts import hf_specs, iter_hf_tensors, layout_for, load_params
from jaxformer.interop.hf_tensors import (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN, open_tensors,
                                          write_safetensors)  # noqa: F401
from jaxformer.data.hf_tokenizer import load_hf_tokenizer, resolve_hf_path
from jaxformer.model.modules import model_class

__all__ = ["load_hf", "save_hf", "HFModel", "resolve_hf_path",
           "read_hf_config", "read_hf_state_dict", "load_hf_tokenizer"]


# ----------------------------------------------------------------------------- reading
def read_hf_config(folder) -> Dict[str, Any]:
    """``config.json`` of a folder as a dict (CheckpointError when unreadable)."""
    path = pathlib.Path(folder) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{str(path)!r} cannot be read as JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object")
    return cfg


def read_hf_state_dict(folder: str | os.PathLike) -> Dict[str, np.ndarray]:
    """All tensors of a HF folder as NumPy arrays in their stored dtype (``bfloat16`` as
    ``ml_dtypes.bfloat16``): safetensors (single or sharded) preferred, else
    ``pytorch_model.bin`` with weights-only loading. Holds the whole checkpoint in memory;
    :func:`load_hf` streams instead."""
    source = open_tensors(folder)
    return {name: source.read(name) for name in source.names()}


class HFModel(tuple):
    """What :func:`load_hf` returns: the tuple ``(model, config, tokenizer)``, plus
    ``.architecture`` (the Hugging Face class name, e.g. ``"LlamaForCausalLM"``)."""

    def __new__(cls, model, config, tokenizer, architecture: str):
        self = super().__new__(cls, (model, config, tokenizer))
        self.architecture = architecture
        return self

    model = property(lambda self: self[0])
    config = property(lambda self: self[1])
    tokenizer = property(lambda self: self[2])


def load_hf(path_or_name: str | os.PathLike, *, dtype: str = "float32", cache_dir=None,
            revision: Optional[str] = None, **config_overrides) -> HFModel:
    """Load a Hugging Face causal LM (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2, GPT-NeoX
    or GPT-2) as ``(model, config, tokenizer_or_None)`` (an :class:`HFModel`).

    ``path_or_name``: a folder with ``config.json`` and weights, or a model name already in
    the local Hugging Face cache (``cache_dir`` defaults to HF's; nothing is downloaded).
    ``model`` is a :class:`jaxformer.GPT` built without a random init and filled tensor by
    tensor in ``dtype`` (the parameter dtype, "float32" or "bfloat16"), so the peak memory
    stays close to the model's own size; ``config`` its :class:`jaxformer.ModelConfig`
    (``config_overrides`` such as ``scan_layers=False`` or ``dtype="bfloat16"`` for the
    compute dtype are applied); ``tokenizer`` a ``BPETokenizer`` from ``tokenizer.json`` (with
    the model's BOS and end tokens, see :func:`load_hf_tokenizer`) or None. The family comes
    from ``config.json`` (``architectures``, else ``model_type``).
    Errors (missing folder, unsupported architecture or config value, unknown/missing
    tensors, shape mismatches) raise :class:`CheckpointError` in one line.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of {', '.join(map(repr, DTYPES))}")
    folder = resolve_hf_path(path_or_name, cache_dir, revision)
    hf = read_hf_config(folder)
    arch = detect_architecture(hf)
    config = model_config_from_hf_family(hf, arch, param_dtype=dtype, **config_overrides)
    source = open_tensors(folder)
    params = load_params(source, arch, config, dtype)
    return HFModel(model_class(config).from_params(config, params), config, load_hf_tokenizer(folder), arch)


# ----------------------------------------------------------------------------- writing
def _write_tokenizer(tokenizer, out: pathlib.Path, max_len: int) -> None:
    """``tokenizer.json`` (its post-processor adding the BOS / EOS that ``encode`` adds, which
    is what ``transformers`` reads) and ``tokenizer_config.json``."""
    from tokenizers import Tokenizer, processors
    d = tokenizer.to_dict()
    if d.get("type") != "bpe":
        raise CheckpointError(f"tokenizer type {d.get('type')!r} cannot be exported to Hugging Face "
                              "(allowed: 'bpe')")
    tk = Tokenizer.from_str(d["tokenizer"])
    bos, eos = getattr(tokenizer, "bos_id", None), getattr(tokenizer, "eos_id", None)
    add_eos = getattr(tokenizer, "add_eos", False)

    def agrees():
        return tk.encode("Hello world", add_special_tokens=True).ids == tokenizer.encode("Hello world")

    text = d["tokenizer"]
    if not agrees():   # e.g. a BOS that came from tokenizer_config.json: put it in a template
        names = {i: tk.id_to_token(i) for i in (bos, eos) if i is not None}
        single = " ".join(([names[bos]] if bos is not None else []) + ["$A"] + ([names[eos]] if add_eos else []))
        template = processors.TemplateProcessing(single=single, pair=f"{single} $B:1",
                                                 special_tokens=[(n, i) for i, n in names.items()])
        old = tk.post_processor
        tk.post_processor = template if old is None else processors.Sequence([old, template])
        if not agrees():
            tk.post_processor = template
        text = tk.to_str()
    (out / "tokenizer.json").write_text(text, encoding="utf-8")
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len}
    if bos is not None:
        cfg.update(bos_token=tk.id_to_token(bos), add_bos_token=True)
    if eos is not None:
        cfg["eos_token"] = tk.id_to_token(eos)
    if add_eos:
        cfg["add_eos_token"] = True
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def save_hf(model, path: str | os.PathLike, tokenizer=None, *, architecture: Optional[str] = None,
            dtype: str = "float32") -> pathlib.Path:
    """Write a jaxformer model as a Hugging Face folder that
    ``transformers.AutoModelForCausalLM.from_pretrained(path)`` loads: ``config.json`` and
    ``model.safetensors`` (``dtype``: "float32" or "bfloat16"; written tensor by tensor).

    ``model``: a :class:`jaxformer.GPT` or a ``(params, config)`` pair. ``architecture``: the
    Hugging Face class to write (e.g. ``"MistralForCausalLM"``); by default the one the
    config matches (see ``hf_families.infer_architecture``). A BPE ``tokenizer`` is written as
    ``tokenizer.json`` + ``tokenizer_config.json``. Returns the folder. Raises
    :class:`ConfigError` naming the first field the architecture cannot express.
    """
    if isinstance(model, tuple):
        params, config = model
    else:
        params, config = model.params(), model.config
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"dtype={dtype!r} is not one of 'float32', 'bfloat16'")
    if config.attn_only:
        raise ConfigError("model.attn_only=True cannot be exported: no Hugging Face architecture drops the MLP")
    try:
        hf_config = hf_config_for(config, architecture)
    except ConfigError as e:
        if config.causal:
            raise
        raise ConfigError(f"model.causal=False cannot be exported ({e}; the encoders written here are "
                          "BertForMaskedLM, RobertaForMaskedLM and XLMRobertaForMaskedLM)") from None
    arch = hf_config["architectures"][0]
    hf_config["dtype"] = dtype
    if arch == GPT2:
        hf_config["torch_dtype"] = dtype
    if tokenizer is not None and arch != GPT2:
        stops = [int(i) for i in getattr(tokenizer, "stop_ids", ())]
        if getattr(tokenizer, "eos_id", None) is not None:
            hf_config["eos_token_id"] = stops if len(stops) > 1 else int(tokenizer.eos_id)
        if getattr(tokenizer, "bos_id", None) is not None:
            hf_config["bos_token_id"] = int(tokenizer.bos_id)
    layout = layout_for(arch, config)
    specs = hf_specs(layout, config)
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    np_dtype = np.dtype(jnp.dtype(dtype))
    write_safetensors(out / SAFETENSORS, {k: (v, np_dtype) for k, v in specs.items()},
                      iter_hf_tensors(params, layout, config), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    if tokenizer is not None:
        _write_tokenizer(tokenizer, out, config.max_len)
    return out
