"""jaxformer: GPT-style decoder-only transformers in JAX/Flax, from first principles.

Public names: ``functional`` (the textbook math), ``kernels`` (the fast paths beside it),
``GPT`` and the NNX modules, the configs and :func:`load_config`, training, generation
(``generate``, ``Generator``) and inspection.
"""
__version__ = "0.1.0"

from . import functional, interp, kernels  # noqa: F401
from .config import (Config, ConfigError, DataConfig, MeshConfig, ModelConfig,  # noqa: F401
                     TrainConfig, load_config)
from .modules import (GPT, DecoderBlock, FeedForward, LayerNorm,  # noqa: F401
                      MultiHeadAttention, count_params)
from .inspect import attention_maps, capture  # noqa: F401
from .interop import load_hf, load_hf_gpt2, save_hf, save_hf_gpt2  # noqa: F401
from .training import evaluate, make_train_step, train  # noqa: F401
from .checkpoint import load_run, save_checkpoint  # noqa: F401
from .generation import Generation, Generator, generate, generate_stream  # noqa: F401
