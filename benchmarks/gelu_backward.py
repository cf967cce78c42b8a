"""A/B in one process: the Tiny Shakespeare CPU train step with the CPU kernel set's tanh-GELU
(its hand-written VJP), with the same kernel set but the textbook GELU (autodiff's gradient),
and with ReLU. Best of 5 alternating rounds.

    python benchmarks/gelu_backward.py [--set key=value ...]
"""
import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer import load_config
from jaxformer.training import steps as training
from jaxformer.model.kernels.cpu import CPU


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/shakespeare_char_cpu.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    variants = {"gelu (hand-written VJP)": ("gelu", CPU),
                "gelu (autodiff)": ("gelu", dataclasses.replace(CPU, name="cpu-textbook-gelu", gelu=None)),
                "relu": ("relu", CPU)}
    runs = {}
    for name, (act, kernels) in variants.items():
        cfg = load_config(args.config, args.overrides + [f"model.activation={act}"])
        params = training.init_params(cfg)
        opt = training.make_optimizer(cfg.train, params)
        state = opt.init(params)
        b = np.random.default_rng(0).integers(0, cfg.model.vocab_size,
                                              (cfg.train.batch_size, cfg.model.max_len + 1), dtype=np.int32)
        b = jnp.asarray(training.micro_batches(b, cfg.train.grad_accum))
        step = training.make_train_step(cfg, opt, kernels=kernels)
        compiled = step.lower(params, state, b, jnp.int32(0)).compile()
        runs[name] = [compiled, params, state, b]
    best = {k: float("inf") for k in runs}
    for _ in range(5):
        for k, v in runs.items():
            c, p, s, b = v
            p, s, m = c(p, s, b, jnp.int32(0))
            jax.block_until_ready(m["loss"])
            t0 = time.perf_counter()
            for i in range(10):
                p, s, m = c(p, s, b, jnp.int32(i))
            jax.block_until_ready(m["loss"])
            best[k] = min(best[k], (time.perf_counter() - t0) / 10 * 1e3)
            v[1], v[2] = p, s
    for k, ms in best.items():
        print(f"{k:26s} {ms:7.1f} ms/step")


if __name__ == "__main__":
    main()
