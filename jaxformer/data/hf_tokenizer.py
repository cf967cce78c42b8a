"""The tokenizer of a Hugging Face folder as a :class:`jaxformer.data.BPETokenizer` with the
model's special tokens, so a converted run encodes a prompt as ``transformers`` does.

- The tokens: ``tokenizer.json`` (any model the ``tokenizers`` library reads), else GPT-2's
  ``vocab.json`` + ``merges.txt``.
- BOS / EOS added by ``encode``: what ``tokenizer.json``'s post-processor adds (Llama's,
  Mistral's and Gemma's ``TemplateProcessing`` puts ``<s>`` / ``<bos>`` first), which is all
  ``transformers`` 5 looks at when the file has one. When it adds nothing (or for
  vocab.json + merges.txt), ``tokenizer_config.json``'s ``add_bos_token`` / ``add_eos_token``
  with its ``bos_token`` / ``eos_token`` (else ``config.json``'s ``bos_token_id``), as
  ``transformers`` 4's Llama and Gemma tokenizers did (version 5 ignores them next to a
  tokenizer.json).
- End tokens: ``eos_id`` is ``tokenizer_config.json``'s ``eos_token``, else the first
  ``eos_token_id`` of ``generation_config.json`` / ``config.json``, else a well-known name
  (``<|endoftext|>``, ``</s>``, ``<eos>``); ``stop_ids`` adds every ``eos_token_id`` of
  those two files (an int or a list: Llama 3's ``<|end_of_text|>`` and ``<|eot_id|>``).
  A post-processor that ends a text with the ``sep_token`` (BERT's ``[CLS] text [SEP]``, no
  EOS in the vocabulary) makes that separator the ``eos_id``.
- The mask token of a masked LM: ``mask_id``, tokenizer_config.json's ``mask_token``.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Dict, List, Optional

from jaxformer.data.tokenizers import BPETokenizer
from jaxformer.errors import CheckpointError

__all__ = ["load_hf_tokenizer", "hf_special_tokens", "read_json_if_present"]

#: Texts whose plain encoding locates the post-processor's additions (the first that gives ids).
_PROBES = ("Hello world", "a", "0", " ")


def read_json_if_present(path) -> Dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when there is no such file."""
    path = pathlib.Path(path)
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{str(path)!r} cannot be read as JSON: {e}") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object")
    return d


def _token_name(value) -> Optional[str]:
    """A tokenizer_config special token: a string, or an AddedToken dict with ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value, where: str) -> List[int]:
    """``bos_token_id`` / ``eos_token_id``: null, an int or a list of ints -> a list."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in items):
        raise CheckpointError(f"{where}={value!r} must be a token id, a list of them, or null")
    return list(items)


def _post_processor_additions(tk):
    """(prefix, suffix): the ids the tokenizer's post-processor puts around a text."""
    if tk.post_processor is None:
        return [], []
    for probe in _PROBES:
        plain = tk.encode(probe, add_special_tokens=False).ids
        if plain:
            break
    else:
        return [], []
    full = tk.encode(probe, add_special_tokens=True).ids
    for k in range(len(full) - len(plain) + 1):
        if full[k:k + len(plain)] == plain:
            return full[:k], full[k + len(plain):]
    raise CheckpointError(f"the tokenizer's post_processor ({type(tk.post_processor).__name__}) changes "
                          "a text's ids instead of adding tokens around them; it is not supported")


def hf_special_tokens(tk, tokenizer_config: Optional[dict] = None, *model_configs: dict,
                      where: str = "tokenizer") -> Dict[str, Any]:
    """``bos_id``, ``eos_id``, ``stop_ids``, ``add_eos`` and ``mask_id`` for :class:`BPETokenizer` from a
    ``tokenizers.Tokenizer``, its ``tokenizer_config.json`` and the model's
    ``generation_config.json`` / ``config.json`` (in that order of precedence), as the module
    docstring describes. ``where`` names the source in errors."""
    tc = tokenizer_config or {}
    V = tk.get_vocab_size(with_added_tokens=True)

    def named(field) -> Optional[int]:
        name = _token_name(tc.get(field))
        return None if name is None else tk.token_to_id(name)

    eos_cfg: List[int] = []
    bos_cfg: List[int] = []
    for cfg, label in model_configs:
        eos_cfg += [i for i in _ids(cfg.get("eos_token_id"), f"{label} eos_token_id") if i < V]
        bos_cfg += [i for i in _ids(cfg.get("bos_token_id"), f"{label} bos_token_id") if i < V]
    eos_id = named("eos_token")
    if eos_id is None:
        eos_id = eos_cfg[0] if eos_cfg else BPETokenizer.detect_eos(tk)

    prefix, suffix = _post_processor_additions(tk)
    if len(suffix) == 1 and suffix[0] != eos_id and (eos_id is None or suffix[0] == named("sep_token")):
        eos_id = suffix[0]                 # BERT's [SEP]: what ends a text
    if prefix or suffix:                   # tokenizer.json decides, as in transformers 5
        if len(prefix) > 1 or len(suffix) > 1 or (suffix and suffix[0] != eos_id):
            raise CheckpointError(
                f"{where}: the post_processor puts {prefix} before and {suffix} after a text; only one "
                f"BOS token before and the EOS (id {eos_id}) or separator after are supported")
        bos_id, add_eos = (prefix[0] if prefix else None), bool(suffix)
    else:                                  # tokenizer_config.json decides
        add_bos, add_eos = tc.get("add_bos_token", False), tc.get("add_eos_token", False)
        for field, value in (("add_bos_token", add_bos), ("add_eos_token", add_eos)):
            if not isinstance(value, bool):
                raise CheckpointError(f"{where} tokenizer_config.json {field}={value!r} must be true or false")
        bos_id = None
        if add_bos:
            bos_id = named("bos_token")
            if bos_id is None and not _token_name(tc.get("bos_token")) and bos_cfg:
                bos_id = bos_cfg[0]
            if bos_id is None:
                raise CheckpointError(f"{where} tokenizer_config.json add_bos_token=true but bos_token="
                                      f"{_token_name(tc.get('bos_token'))!r} is not in the vocabulary")
        if add_eos and eos_id is None:
            raise CheckpointError(f"{where} tokenizer_config.json add_eos_token=true but the tokenizer "
                                  "has no eos token")
    stops = list(dict.fromkeys(([] if eos_id is None else [eos_id]) + eos_cfg))   # unique, in order
    return {"bos_id": bos_id, "eos_id": eos_id, "stop_ids": stops, "add_eos": add_eos, "mask_id": named("mask_token")}


def _model_configs(folder: pathlib.Path):
    """(dict, label) for generation_config.json then config.json of ``folder`` (when present)."""
    return [(read_json_if_present(folder / name), name)
            for name in ("generation_config.json", "config.json")]


def load_hf_tokenizer(folder: str | os.PathLike, *, model_folder: Optional[str | os.PathLike] = None):
    """The tokenizer of a Hugging Face folder as a :class:`jaxformer.data.BPETokenizer` whose
    ``encode`` gives ``transformers.AutoTokenizer.from_pretrained(folder)(text)["input_ids"]``
    (the BOS first for Llama, Mistral and Gemma), with the model's end tokens as
    ``stop_ids``; None when there are no tokenizer files (e.g. a SentencePiece
    ``tokenizer.model`` alone). Read from ``tokenizer.json``, else GPT-2's ``vocab.json`` +
    ``merges.txt``, plus ``tokenizer_config.json``; the eos ids of ``generation_config.json``
    and ``config.json`` come from ``model_folder`` (default: ``folder``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

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
        raise CheckpointError(f"tokenizer files in {str(folder)!r} cannot be read: {e}") from None
    tc = read_json_if_present(folder / "tokenizer_config.json")
    configs = _model_configs(pathlib.Path(model_folder) if model_folder is not None else folder)
    return BPETokenizer(tk, **hf_special_tokens(tk, tc, *configs, where=str(folder)))


def tokenizer_from_hf_json(text: str, *, model_folder=None, where: str = "tokenizer"):
    """A ``tokenizer.json`` text (no tokenizer_config) as a ``BPETokenizer``: the BOS its
    post-processor adds, the eos ids of ``model_folder``'s generation_config.json / config.json."""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_str(text)
    configs = _model_configs(pathlib.Path(model_folder)) if model_folder is not None else []
    return BPETokenizer(tk, **hf_special_tokens(tk, {}, *configs, where=where))


# ----------------------------------------------------------------------------- locating
def cache_snapshot(name: str, cache_dir=None, revision: Optional[str] = None) -> Optional[pathlib.Path]:
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
            raise CheckpointError(f"{str(p)!r} is not a Hugging Face model folder (no config.json)")
        return p
    if p.exists():
        raise CheckpointError(f"{str(p)!r} is a file; pass the folder that holds config.json")
    snap = cache_snapshot(str(path_or_name), cache_dir, revision)
    if snap is None or not (snap / "config.json").is_file():
        raise CheckpointError(
            f"{str(path_or_name)!r} is neither a folder nor a model in the local Hugging Face cache "
            "(set HF_HUB_CACHE or pass the folder; nothing is downloaded: on a machine with internet run "
            f"`huggingface-cli download {path_or_name}` and copy ~/.cache/huggingface here, or pass that folder)")
    return snap
