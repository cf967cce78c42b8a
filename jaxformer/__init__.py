"""jaxformer: GPT-style decoder-only transformers in JAX/Flax, from first principles.

The names below are the whole public surface of the top level (one line each in the README's
"Public API" table): the textbook math, configs, the model, training and run folders,
generation and scoring, looking inside, and Hugging Face in and out. Everything else lives in
the subpackages (``jaxformer.model``, ``jaxformer.data``, ``jaxformer.training``,
``jaxformer.infer``, ``jaxformer.interp``, ``jaxformer.viz``, ``jaxformer.interop``).
"""
from jaxformer.version import __version__  # noqa: F401

from jaxformer import functional
from jaxformer.config import Config, ModelConfig, TrainConfig, load_config
from jaxformer.errors import ConfigError, JaxformerError
from jaxformer.infer.generation import generate, generate_stream
from jaxformer.infer.scoring import score
from jaxformer.interop.hf_files import load_hf, save_hf
from jaxformer.interp.activations import attention_maps
from jaxformer.interp.hooks import run_with_cache, run_with_hooks
from jaxformer.model.modules import GPT, count_params
from jaxformer.training.checkpoint import load_run
from jaxformer.training.loop import train

__all__ = [
    "functional",
    "Config", "ModelConfig", "TrainConfig", "load_config", "ConfigError", "JaxformerError",
    "GPT", "count_params",
    "train", "load_run",
    "generate", "generate_stream", "score",
    "attention_maps", "run_with_cache", "run_with_hooks",
    "load_hf", "save_hf",
]
