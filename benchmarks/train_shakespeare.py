"""Tiny Shakespeare, character level, the CPU recipe: val loss at 2000 iterations, wall time,
and the train step's throughput next to the same model in eager PyTorch, measured in one run.

    python benchmarks/train_shakespeare.py [--data PATH] [--steps N] [--out DIR] [--json FILE]

1. Trains ``configs/shakespeare_char_cpu.yaml`` with ``jaxformer.training.loop.train`` (the same
   code path as ``jaxformer train``) and reads val loss and tokens/s from its metrics.
2. Times the jitted JAX train step and the eager PyTorch AdamW step of the same model (same
   batch, context, optimizer, clipping) in alternating rounds, so both see the same machine
   load; reports the best round of each and the ratio JAX / PyTorch.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# $JAXFORMER_SHAKESPEARE (the variable the library reads) wins over this benchmark's own guesses.
DEFAULT_DATA = pathlib.Path(os.environ["JAXFORMER_SHAKESPEARE"]) if os.environ.get("JAXFORMER_SHAKESPEARE") else \
    next((p for p in (REPO.parent / "shared" / "data" / "tinyshakespeare.txt",
                      pathlib.Path("/work/shared/data/tinyshakespeare.txt")) if p.is_file()),
         REPO.parent / "shared" / "data" / "tinyshakespeare.txt")


def time_jax_steps(config, steps: int) -> float:
    """Seconds per jitted train step (after compilation), on fixed random batches."""
    import jax
    import numpy as np

    from jaxformer.training.steps import init_params, make_optimizer, make_train_step, micro_batches

    params = init_params(config)
    opt = make_optimizer(config.train, params)
    opt_state = opt.init(params)
    step_fn = make_train_step(config, opt)
    rng = np.random.default_rng(0)
    B, T, V = config.train.batch_size, config.model.max_len, config.model.vocab_size
    batches = [micro_batches(rng.integers(0, V, (B, T + 1), dtype=np.int32), config.train.grad_accum)
               for _ in range(8)]
    for i in range(3):
        params, opt_state, m = step_fn(params, opt_state, batches[i], np.int32(i))
    jax.block_until_ready(m)

    def rounds():
        nonlocal params, opt_state
        t0 = time.perf_counter()
        for i in range(steps):
            params, opt_state, m = step_fn(params, opt_state, batches[i % 8], np.int32(i))
        jax.block_until_ready(m)
        return (time.perf_counter() - t0) / steps
    return rounds


def torch_gpt():
    """The eager PyTorch GPT module (benchmarks/torch_baseline.py, imported here: this script
    is also imported by path from the tests, where benchmarks/ is not on sys.path)."""
    from torch_baseline import torch_gpt as load

    return load()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="Tiny Shakespeare text file (default: "
                    "$JAXFORMER_SHAKESPEARE, else ../shared/data/tinyshakespeare.txt)")
    ap.add_argument("--config", default=str(REPO / "configs" / "shakespeare_char_cpu.yaml"))
    ap.add_argument("--steps", type=int, default=None, help="training iterations (default: the config's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", help="run folder (default: a temporary folder)")
    ap.add_argument("--timing-steps", type=int, default=100, help="steps per timing round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating JAX/PyTorch timing rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--skip-train", action="store_true", help="only the side-by-side timing")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    import jax

    from jaxformer import load_config
    time_train_step = torch_gpt().time_train_step
    from jaxformer.training.loop import train

    if not pathlib.Path(args.data).is_file():
        print(f"Tiny Shakespeare not found at {args.data}; pass --data PATH", file=sys.stderr)
        return 2
    overrides = [f"data.path={args.data}"] + args.overrides
    if args.steps:
        overrides.append(f"train.max_steps={args.steps}")
    config = load_config(args.config, overrides)
    res = {"config": os.path.relpath(args.config, REPO), "steps": config.train.max_steps,
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
           "jax": jax.__version__, "device": str(jax.devices()[0])}

    if not args.skip_train:
        out = args.out or tempfile.mkdtemp(prefix="jaxformer-shakespeare-")
        t0 = time.perf_counter()
        result = train(config, out, progress=sys.stderr.isatty())
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        config = result.config
        recs = result.metrics
        vals = [(r["step"], r["val_loss"]) for r in recs if r.get("val_loss") is not None]
        res["val_loss"] = {str(s): round(v, 4) for s, v in vals}
        res["final_val_loss"] = round(vals[-1][1], 4)
        res["final_train_loss"] = round(recs[-1]["train_loss"], 4)
        steady = [r["tokens_per_s"] for r in recs if r.get("tokens_per_s") and r["step"] > 50]
        res["train_tokens_per_s_median"] = round(statistics.median(steady), 1)
        res["run_dir"] = out
        print(f"trained {config.train.max_steps} steps in {res['wall_s']} s: val loss "
              f"{res['final_val_loss']}, median {res['train_tokens_per_s_median']:.0f} tokens/s", flush=True)

    # side by side: alternate rounds so both sides see the same load
    tokens = config.train.batch_size * config.model.max_len
    jax_round = time_jax_steps(config, args.timing_steps)
    jax_s, torch_s, threads = [], [], None
    for _ in range(args.rounds):
        jax_s.append(jax_round())
        t = time_train_step(config.model, config.train, steps=args.timing_steps, warmup=5,
                            threads=args.threads)
        torch_s.append(t["ms_per_step"] / 1e3)
        threads = t["threads"]
    res.update({
        "tokens_per_step": tokens, "torch_threads": threads,
        "jax_ms_per_step": [round(s * 1e3, 2) for s in jax_s],
        "torch_ms_per_step": [round(s * 1e3, 2) for s in torch_s],
        "jax_tokens_per_s": round(tokens / min(jax_s), 1),
        "torch_tokens_per_s": round(tokens / min(torch_s), 1),
    })
    res["ratio_jax_over_torch"] = round(res["jax_tokens_per_s"] / res["torch_tokens_per_s"], 3)
    print(json.dumps(res, indent=2))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
