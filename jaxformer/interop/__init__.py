"""Interoperability with other ecosystems. Today: Hugging Face GPT-2.

- :func:`load_hf_gpt2` -- a HF GPT-2 folder (or a name in the local HF cache) ->
  ``(jaxformer.GPT, ModelConfig, tokenizer_or_None)``.
- :func:`save_hf_gpt2` -- a jaxformer GPT -> a folder ``transformers`` loads.
- :func:`params_from_hf` / :func:`hf_from_params` and the config mappings, as pure NumPy
  functions (see ``hf_gpt2.py`` for the tensor-name table).
"""
from .hf_files import (load_hf_gpt2, load_hf_tokenizer, read_hf_state_dict,  # noqa: F401
                       resolve_hf_path, save_hf_gpt2)
from .hf_gpt2 import (hf_config_from_model, hf_from_params, model_config_from_hf,  # noqa: F401
                      params_from_hf)

__all__ = ["load_hf_gpt2", "save_hf_gpt2", "load_hf_tokenizer", "read_hf_state_dict",
           "resolve_hf_path", "model_config_from_hf", "hf_config_from_model", "params_from_hf",
           "hf_from_params"]
