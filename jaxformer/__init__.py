"""jaxformer: GPT-style decoder-only transformers in JAX/Flax, from first principles.

Public names: ``functional`` (pure math), ``GPT`` and the NNX modules, the configs
and :func:`load_config`. Later layers (training, generation, inspection) are
exposed here as they land.
"""
__version__ = "0.1.0"

from . import functional  # noqa: F401
from .config import (Config, ConfigError, DataConfig, MeshConfig, ModelConfig,  # noqa: F401
                     TrainConfig, load_config)
from .modules import (GPT, DecoderBlock, FeedForward, LayerNorm,  # noqa: F401
                      MultiHeadAttention, count_params)
