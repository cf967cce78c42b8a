"""jaxformer: GPT-style decoder-only transformers in JAX/Flax, from first principles.

Public names: ``functional`` (the textbook math), ``kernels`` (the fast paths beside it),
``GPT`` and the NNX modules, the configs and :func:`load_config`, training, generation
(``generate``, ``Generator``) and inspection.
"""
from jaxformer.version import __version__  # noqa: F401

from jaxformer import functional, interp
from jaxformer.model import kernels  # noqa: F401
from jaxformer.config import (Config, ConfigError, DataConfig, MeshConfig, ModelConfig, TrainConfig,
                              load_config)
from jaxformer.model.modules import (GPT, DecoderBlock, FeedForward, LayerNorm, MultiHeadAttention,
                                     count_params)
from jaxformer.interp.capture import attention_maps, capture  # noqa: F401
from jaxformer.interop import load_hf, load_hf_gpt2, save_hf, save_hf_gpt2  # noqa: F401
from jaxformer.training.loop import train  # noqa: F401
from jaxformer.training.steps import evaluate, make_train_step  # noqa: F401
from jaxformer.training.checkpoint import load_run, save_checkpoint  # noqa: F401
from jaxformer.infer.generation import Generation, Generator, generate, generate_stream  # noqa: F401
