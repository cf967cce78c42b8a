"""jaxformer: GPT-style decoder-only transformers in JAX/Flax, from first principles.

The names below are the whole public surface of the top level (one line each in the README's
"Public API" table): the textbook math, configs, the model, training and run folders,
generation and scoring, looking inside, and Hugging Face in and out. Everything else lives in
the subpackages (``jaxformer.model``, ``jaxformer.data``, ``jaxformer.training``,
``jaxformer.infer``, ``jaxformer.interp``, ``jaxformer.viz``, ``jaxformer.interop``).

Each name is imported from its home on first use (PEP 562), so that ``import jaxformer`` and
the command line answer in a fraction of a second and JAX starts only when something needs it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from jaxformer.version import __version__  # noqa: F401

#: Each public name and the module it lives in.
_HOMES = {
    "functional": "jaxformer",
    "Config": "jaxformer.config", "ModelConfig": "jaxformer.config",
    "TrainConfig": "jaxformer.config", "load_config": "jaxformer.config",
    "ConfigError": "jaxformer.errors", "JaxformerError": "jaxformer.errors",
    "GPT": "jaxformer.model.modules", "Encoder": "jaxformer.model.modules",
    "count_params": "jaxformer.model.modules",
    "train": "jaxformer.training.loop", "load_run": "jaxformer.training.checkpoint",
    "generate": "jaxformer.infer.generation", "generate_stream": "jaxformer.infer.generation",
    "score": "jaxformer.infer.scoring",
    "attention_maps": "jaxformer.interp.activations",
    "run_with_cache": "jaxformer.interp.hooks", "run_with_hooks": "jaxformer.interp.hooks",
    "load_hf": "jaxformer.interop.hf_files", "save_hf": "jaxformer.interop.hf_files",
}

__all__ = [
    "functional",
    "Config", "ModelConfig", "TrainConfig", "load_config", "ConfigError", "JaxformerError",
    "GPT", "Encoder", "count_params",
    "train", "load_run",
    "generate", "generate_stream", "score",
    "attention_maps", "run_with_cache", "run_with_hooks",
    "load_hf", "save_hf",
]


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'jaxformer' has no attribute {name!r}")
    if home == "jaxformer":                      # a submodule
        value = importlib.import_module(f"jaxformer.{name}")
    else:
        value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from jaxformer import functional  # noqa: F401
    from jaxformer.config import Config, ModelConfig, TrainConfig, load_config  # noqa: F401
    from jaxformer.errors import ConfigError, JaxformerError  # noqa: F401
    from jaxformer.infer.generation import generate, generate_stream  # noqa: F401
    from jaxformer.infer.scoring import score  # noqa: F401
    from jaxformer.interop.hf_files import load_hf, save_hf  # noqa: F401
    from jaxformer.interp.activations import attention_maps  # noqa: F401
    from jaxformer.interp.hooks import run_with_cache, run_with_hooks  # noqa: F401
    from jaxformer.model.modules import GPT, Encoder, count_params  # noqa: F401
    from jaxformer.training.checkpoint import load_run  # noqa: F401
    from jaxformer.training.loop import train  # noqa: F401
