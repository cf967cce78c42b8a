"""Reading and writing Hugging Face GPT-2 folders: ``load_hf_gpt2`` and ``save_hf_gpt2``.

A GPT-2 folder holds ``config.json`` and the weights as ``model.safetensors`` (or shards
listed in ``model.safetensors.index.json``) or ``pytorch_model.bin`` (read with
``torch.load(weights_only=True)``, never plain pickle), plus optionally the tokenizer
(``tokenizer.json`` or ``vocab.json`` + ``merges.txt``). A name instead of a path is looked
up in the local Hugging Face cache only (no network).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..errors import CheckpointError
from .hf_gpt2 import hf_config_from_model, hf_from_params, model_config_from_hf, params_from_hf

__all__ = ["load_hf_gpt2", "save_hf_gpt2", "resolve_hf_path", "read_hf_state_dict",
           "load_hf_tokenizer"]

SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"


# ----------------------------------------------------------------------------- locating
def _cache_snapshot(name: str, cache_dir=None, revision: Optional[str] = None) -> Optional[pathlib.Path]:
    """The snapshot folder of ``name`` in the local HF cache, or None (never downloads)."""
    candidates = [name] + ([f"openai-community/{name}"] if "/" not in name else [])
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # no huggingface_hub: read the cache layout directly
        snapshot_download = None
    for repo in candidates:
        if snapshot_download is not None:
            try:
                return pathlib.Path(snapshot_download(repo, cache_dir=cache_dir, revision=revision,
                                                      local_files_only=True))
            except Exception:  # LocalEntryNotFoundError, bad repo id, ...
                continue
        root = pathlib.Path(cache_dir or os.environ.get("HF_HUB_CACHE") or
                            pathlib.Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub").expanduser()
        folder = root / ("models--" + repo.replace("/", "--"))
        ref = folder / "refs" / (revision or "main")
        commit = ref.read_text().strip() if ref.is_file() else (revision or "")
        if commit and (folder / "snapshots" / commit).is_dir():
            return folder / "snapshots" / commit
    return None


def resolve_hf_path(path_or_name: str | os.PathLike, cache_dir=None,
                    revision: Optional[str] = None) -> pathlib.Path:
    """A local folder holding ``config.json``: ``path_or_name`` itself when it is a folder,
    else the snapshot of that model name in the local Hugging Face cache (offline)."""
    p = pathlib.Path(path_or_name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise CheckpointError(f"{str(p)!r} is not a Hugging Face GPT-2 folder (no config.json)")
        return p
    if p.exists():
        raise CheckpointError(f"{str(p)!r} is a file; pass the folder that holds config.json")
    snap = _cache_snapshot(str(path_or_name), cache_dir, revision)
    if snap is None or not (snap / "config.json").is_file():
        raise CheckpointError(
            f"{str(path_or_name)!r} is neither a folder nor a model in the local Hugging Face cache "
            "(set HF_HUB_CACHE or pass the folder; nothing is downloaded)")
    return snap


# ----------------------------------------------------------------------------- reading
def read_hf_config(folder: pathlib.Path) -> Dict[str, Any]:
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{str(folder / 'config.json')!r} cannot be read as JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{str(folder / 'config.json')!r} must hold a JSON object")
    return cfg


def _read_safetensors(path: pathlib.Path) -> Dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, TypeError, ValueError) as e:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: {e}") from None


def _read_torch_bin(path: pathlib.Path) -> Dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{str(path)!r} needs PyTorch to read (pip install 'jaxformer[hf]'), "
                              "or convert it to model.safetensors") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for anything but plain tensors
        raise CheckpointError(f"{str(path)!r} cannot be loaded with weights_only=True: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{str(path)!r} does not hold a state dict")
    return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}


def read_hf_state_dict(folder: str | os.PathLike) -> Dict[str, np.ndarray]:
    """All tensors of a HF folder as NumPy arrays: safetensors (single or sharded) preferred,
    else ``pytorch_model.bin`` with weights-only loading."""
    folder = pathlib.Path(folder)
    if (folder / SAFETENSORS).is_file():
        return _read_safetensors(folder / SAFETENSORS)
    if (folder / SAFETENSORS_INDEX).is_file():
        try:
            index = json.loads((folder / SAFETENSORS_INDEX).read_text(encoding="utf-8"))
            shards = sorted(set(index["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{str(folder / SAFETENSORS_INDEX)!r} is not a valid index: {e}") from None
        state: Dict[str, np.ndarray] = {}
        for shard in shards:
            state.update(_read_safetensors(folder / pathlib.Path(shard).name))
        return state
    if (folder / TORCH_BIN).is_file():
        return _read_torch_bin(folder / TORCH_BIN)
    raise CheckpointError(f"{str(folder)!r} holds no weights (expected {SAFETENSORS}, "
                          f"{SAFETENSORS_INDEX} or {TORCH_BIN})")


def load_hf_tokenizer(folder: str | os.PathLike):
    """The GPT-2 tokenizer of a folder wrapped as :class:`jaxformer.data.BPETokenizer`, read
    with the ``tokenizers`` library from ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``
    (byte-level BPE, as GPT-2); None when neither is present."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    from ..data import BPETokenizer
    folder = pathlib.Path(folder)
    try:
        if (folder / "tokenizer.json").is_file():
            tk = Tokenizer.from_file(str(folder / "tokenizer.json"))
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            tk = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
            tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tk.decoder = decoders.ByteLevel()
            tk.post_processor = processors.ByteLevel(trim_offsets=False)
        else:
            return None
    except Exception as e:  # the tokenizers library raises plain Exception subclasses
        raise CheckpointError(f"GPT-2 tokenizer files in {str(folder)!r} cannot be read: {e}") from None
    return BPETokenizer(tk)


def load_hf_gpt2(path_or_name: str | os.PathLike, *, cache_dir=None, revision: Optional[str] = None,
                 dtype: str = "float32", **config_overrides) -> Tuple[Any, Any, Any]:
    """Load a Hugging Face GPT-2 checkpoint as ``(model, config, tokenizer_or_None)``.

    ``path_or_name``: a folder with ``config.json`` and weights, or a model name already in
    the local Hugging Face cache (e.g. ``"gpt2"``; ``cache_dir`` defaults to HF's). ``model``
    is a :class:`jaxformer.GPT` holding the checkpoint's weights, ``config`` its
    :class:`jaxformer.ModelConfig` (``config_overrides`` such as ``scan_layers=False`` or
    ``dtype="bfloat16"`` are applied), ``tokenizer`` a ``BPETokenizer`` or None. ``dtype``
    is the parameter dtype. Errors (missing folder, unknown/missing tensors, shape
    mismatches, unsupported variants) raise :class:`CheckpointError`.
    """
    import jax.numpy as jnp

    from ..modules import GPT
    folder = resolve_hf_path(path_or_name, cache_dir, revision)
    config = model_config_from_hf(read_hf_config(folder), param_dtype=dtype, **config_overrides)
    params = params_from_hf(read_hf_state_dict(folder), config, dtype=np.float32)
    # Built without drawing a random init for 124M parameters, then filled.
    model = GPT.from_params(config, _to_jax(params, jnp.dtype(dtype)))
    return model, config, load_hf_tokenizer(folder)


def _to_jax(tree, dtype):
    import jax
    import jax.numpy as jnp
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


# ----------------------------------------------------------------------------- writing
def save_hf_gpt2(model, path: str | os.PathLike, tokenizer=None) -> pathlib.Path:
    """Write ``model`` (a :class:`jaxformer.GPT` with a GPT-2-shaped config) as a folder that
    ``transformers.GPT2LMHeadModel.from_pretrained(path)`` loads: ``config.json`` and
    ``model.safetensors`` (float32). A BPE ``tokenizer`` (``jaxformer.data.BPETokenizer``)
    is written as ``tokenizer.json`` + ``tokenizer_config.json``. Returns the folder.
    Raises :class:`ConfigError` when the architecture has no GPT-2 equivalent."""
    from safetensors.numpy import save_file
    config = model.config
    hf_config = hf_config_from_model(config)
    state = hf_from_params(model.params(), config)
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / SAFETENSORS), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    if tokenizer is not None:
        d = tokenizer.to_dict()
        if d.get("type") != "bpe":
            raise CheckpointError(f"tokenizer type {d.get('type')!r} cannot be exported to Hugging Face "
                                  "(allowed: 'bpe')")
        (out / "tokenizer.json").write_text(d["tokenizer"], encoding="utf-8")
        (out / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": config.max_len},
            indent=2) + "\n", encoding="utf-8")
    return out
