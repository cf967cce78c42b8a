"""Interoperability with Hugging Face: Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2, GPT-NeoX
and GPT-2 checkpoints, both ways.

- :func:`load_hf` -- a HF folder (or a name in the local HF cache) ->
  ``(jaxformer.GPT, ModelConfig, tokenizer_or_None)``, streamed tensor by tensor.
- :func:`save_hf` -- a jaxformer GPT (or ``(params, config)``) -> a folder ``transformers``
  loads with ``AutoModelForCausalLM``.
- :func:`params_from_hf` / :func:`hf_from_params` and the GPT-2 config mappings as pure NumPy
  functions.
- :func:`model_config_from_hf_family` / :func:`hf_config_for`: config.json <-> ModelConfig for
  every family (``hf_families.py``); the tensor tables are in ``hf_layouts.py``.
"""
from jaxformer.interop.hf_families import (ARCHITECTURES, detect_architecture, hf_config_for,
                                           infer_architecture, model_config_from_hf_family)
from jaxformer.interop.hf_files import (HFModel, load_hf, load_hf_tokenizer, read_hf_config, read_hf_state_dict,
                                        save_hf)
from jaxformer.data.hf_tokenizer import resolve_hf_path
from jaxformer.interop.hf_gpt2 import (hf_config_from_model, hf_from_params, model_config_from_hf,
                                       params_from_hf)
from jaxformer.interop.hf_tensors import TensorSource, open_tensors  # noqa: F401

__all__ = ["load_hf", "save_hf", "HFModel", "ARCHITECTURES",
           "load_hf_tokenizer", "read_hf_config", "read_hf_state_dict", "resolve_hf_path",
           "model_config_from_hf_family", "hf_config_for", "infer_architecture", "detect_architecture",
           "model_config_from_hf", "hf_config_from_model", "params_from_hf", "hf_from_params",
           "TensorSource", "open_tensors"]
