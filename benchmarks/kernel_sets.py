"""Train-step time of each kernel set, side by side in one process, alternating rounds.

The textbook (``model.kernels=textbook``: plain autodiff, what a learner reads) against the
CPU kernels (hand-written backward passes) or whichever sets are named, on the same
config, parameters and batch. Each round times every set once; the best round of each is
reported with its ratio to the first set, so drift on a shared machine hits all alike.

    python benchmarks/kernel_sets.py [--config configs/shakespeare_char_cpu.yaml] [--set key=value ...]
        [--kernels textbook cpu] [--rounds 3] [--steps 20] [--json FILE]
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer import load_config
from jaxformer.training import steps as training
from jaxformer.model.kernels import platform_of


def compiled_step(cfg):
    params = training.init_params(cfg)
    opt = training.make_optimizer(cfg.train, params)
    state = opt.init(params)
    kernels = training.step_kernels(cfg.model)
    step = training.make_train_step(cfg, opt, kernels=kernels)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.model.max_len + 1), dtype=np.int32)
    batch = jnp.asarray(training.micro_batches(batch, cfg.train.grad_accum))
    t0 = time.perf_counter()
    compiled = step.lower(params, state, batch, jnp.int32(0)).compile()
    return {"step": compiled, "params": params, "state": state, "batch": batch,
            "compile_s": time.perf_counter() - t0, "resolved": kernels.name}


def time_steps(run, steps):
    params, state, m = run["step"](run["params"], run["state"], run["batch"], jnp.int32(0))
    jax.block_until_ready(m["loss"])
    t0 = time.perf_counter()
    for i in range(steps):
        params, state, m = run["step"](params, state, run["batch"], jnp.int32(i + 1))
    jax.block_until_ready(m["loss"])
    run["params"], run["state"] = params, state
    return (time.perf_counter() - t0) / steps * 1e3, float(m["loss"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/shakespeare_char_cpu.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--kernels", nargs="+", default=["textbook", "cpu"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    runs = {}
    for k in args.kernels:
        cfg = load_config(args.config, args.overrides + [f"model.kernels={k}"])
        runs[k] = compiled_step(cfg)
        print(f"{k:>9s}: kernel set {runs[k]['resolved']!r}, compiled in {runs[k]['compile_s']:.1f} s", flush=True)
    best = {k: float("inf") for k in runs}
    for r in range(args.rounds):
        for k, run in runs.items():
            ms, loss = time_steps(run, args.steps)
            best[k] = min(best[k], ms)
            print(f"round {r + 1} {k:>9s} {ms:9.1f} ms/step  loss {loss:.4f}", flush=True)
    first = best[args.kernels[0]]
    print(f"\n{args.config} {' '.join(args.overrides)} on {platform_of()}: best of {args.rounds} rounds x "
          f"{args.steps} steps")
    for k, ms in best.items():
        print(f"  {k:>9s} {ms:9.1f} ms/step   {first / ms:5.2f}x the speed of {args.kernels[0]}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": args.config, "overrides": args.overrides, "platform": platform_of(),
                       "ms_per_step": best, "compile_s": {k: r["compile_s"] for k, r in runs.items()}},
                      fh, indent=2)


if __name__ == "__main__":
    main()
