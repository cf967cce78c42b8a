"""Rematerialisation policies: memory the compiled train step needs (XLA's own memory
analysis: temporaries + arguments) and step time, for remat none / dots / full.

    python benchmarks/remat_policies.py [--config configs/default.yaml] [--set key=value ...] [--steps 5]
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer import load_config
from jaxformer.training import steps as training


def measure(cfg, steps):
    params = training.init_params(cfg)
    opt = training.make_optimizer(cfg.train, params)
    state = opt.init(params)
    step = training.make_train_step(cfg, opt)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.model.max_len + 1), dtype=np.int32)
    batch = jnp.asarray(training.micro_batches(batch, cfg.train.grad_accum))
    compiled = step.lower(params, state, batch, jnp.int32(0)).compile()
    mem = compiled.memory_analysis()
    temp_mb = mem.temp_size_in_bytes / 2 ** 20
    params, state, m = compiled(params, state, batch, jnp.int32(0))
    jax.block_until_ready(m["loss"])
    t0 = time.perf_counter()
    for i in range(steps):
        params, state, m = compiled(params, state, batch, jnp.int32(i + 1))
    jax.block_until_ready(m["loss"])
    return temp_mb, (time.perf_counter() - t0) / steps * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    print(f"{'remat':6s} {'temp memory':>12s} {'step':>10s}")
    for policy in ("none", "dots", "full"):
        cfg = load_config(args.config, args.overrides + [f"model.remat={policy}"])
        mb, ms = measure(cfg, args.steps)
        print(f"{policy:6s} {mb:10.0f} MB {ms:8.1f} ms", flush=True)


if __name__ == "__main__":
    main()
