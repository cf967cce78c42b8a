"""``jaxformer info``: build a model from a config, print its parameter count and run a forward pass."""
import argparse

from jaxformer.cli.commands import add_config_arguments

HELP = "build the model of a config, print parameter counts and the output shape of a forward pass"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--batch", type=int, default=2, help="batch size of the test forward pass")


def run(args) -> int:
    from jaxformer.config import load_config

    cfg = load_config(args.config, args.overrides).model   # bad input answers before JAX starts
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxformer.model.modules import model_class

    model = model_class(cfg)(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.zeros((args.batch, cfg.max_len), jnp.int32)
    logits = nnx.jit(lambda m, t: m(t))(model, tokens)
    print(f"parameters: {model.num_params():,} "
          f"(non-embedding {model.num_params(non_embedding=True):,})")
    print(f"forward: tokens {tuple(tokens.shape)} -> logits {tuple(logits.shape)} "
          f"{logits.dtype} on {jax.devices()[0].platform}")
    return 0
