"""``jaxformer bench``: compile time, step time, tokens/s, MFU, peak memory, decode speed."""
import argparse

from jaxformer.cli.commands import add_config_arguments
import json

HELP = ("measure train-step compile/step time, tokens/s, MFU, peak memory and KV-cache decode speed "
        "(against eager PyTorch: benchmarks/train_shakespeare.py in the repository)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--steps", type=int, default=10, help="timed train steps (after 2 warm-up steps)")
    p.add_argument("--no-decode", action="store_true", help="skip the decode measurement")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args) -> int:
    from jaxformer.config import load_config
    from jaxformer.errors import ConfigError

    if args.steps < 1:
        raise ConfigError(f"--steps={args.steps} must be >= 1")
    cfg = load_config(args.config, args.overrides)   # bad input answers before JAX starts
    from jaxformer.training.bench import run_benchmark

    r = run_benchmark(cfg, steps=args.steps, decode=not args.no_decode)
    if args.json:
        print(json.dumps(r))
        return 0
    m = cfg.model
    print(f"model: {m.n_layer} layers, width {m.d_model}, {m.n_head} heads, context {m.max_len}, "
          f"batch {cfg.train.batch_size}, {r['dtype']} on {r['device']} "
          f"(jax {r['jax']}, flax {r['flax']})")
    rows = [("kernels", f"{r['kernels']} (model.kernels={m.kernels})"),
            ("compile (train step)", f"{r['compile_s']:.2f} s"),
            ("train step", f"{r['step_ms']:.1f} ms"),
            ("tokens/s", f"{r['tokens_per_s']:,.0f}"),
            ("MFU", f"{100 * r['mfu']:.1f}% of measured peak {r['peak_flops'] / 1e9:,.0f} GFLOP/s"),
            ("peak memory", f"{r['peak_memory_mb']:,.0f} MB")]
    if r.get("decode_tokens_per_s"):
        rows.append(("decode (batch 1, greedy)", f"{r['decode_tokens_per_s']:,.1f} tokens/s"))
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
    return 0
