"""Benchmark ``jaxformer.attention_maps``: one compiled, vmapped call for a whole batch versus a
Python loop calling it one example at a time (the same compiled single-example function).

    python benchmarks/attention_maps.py                      # 64 x 128 tokens, configs/default.yaml shape
    python benchmarks/attention_maps.py --batch 8 --seq 32   # quick

The model is the 6-layer default shape (width 512, 8 heads, d_ff 2048) with a smaller
vocabulary (``--vocab``, 256 by default: the vocabulary does not touch attention).
Prints compile time, steady-state times (median of ``--repeat`` runs) and the speed-up, and
checks that both ways give the same maps.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxformer import GPT, attention_maps, load_config  # noqa: E402
from jaxformer.interp import activations as I  # noqa: E402


def timed(fn, repeat: int):
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "default.yaml"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    cfg = load_config(args.config, [f"model.vocab_size={args.vocab}", *args.overrides]).model
    model = GPT(cfg, rngs=nnx.Rngs(0))
    params = model.params()
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.seq)).astype(np.int32)
    B, T, L, H = args.batch, args.seq, cfg.n_layer, cfg.n_head
    print(f"model: {L} layers, d_model {cfg.d_model}, {H} heads, d_ff {cfg.d_ff}, vocab {cfg.vocab_size}; "
          f"batch {B} x {T} tokens -> weights [{B}, {L}, {H}, {T}, {T}] "
          f"({B * L * H * T * T * 4 / 2**20:.0f} MiB) on {jax.devices()[0].platform} "
          f"({os.cpu_count()} cores)")

    t0 = time.perf_counter()
    batched = jax.block_until_ready(attention_maps((params, cfg), tokens))
    compile_batched = time.perf_counter() - t0
    t_batched, batched = timed(lambda: attention_maps((params, cfg), tokens), args.repeat)

    t0 = time.perf_counter()
    jax.block_until_ready(attention_maps((params, cfg), tokens[:1]))
    compile_one = time.perf_counter() - t0

    def loop():
        return [attention_maps((params, cfg), tokens[b:b + 1]) for b in range(B)]
    t_loop, looped = timed(loop, args.repeat)
    diff = max(float(np.abs(np.asarray(batched[b]) - np.asarray(looped[b][0])).max()) for b in range(B))
    traces = I.attention_maps_fn._cache_size()

    res = {"batch": B, "seq": T, "n_layer": L, "n_head": H, "d_model": cfg.d_model,
           "compile_batched_s": compile_batched, "batched_s": t_batched,
           "compile_single_s": compile_one, "loop_s": t_loop, "speedup": t_loop / t_batched,
           "max_abs_diff": diff, "compiled_variants": traces}
    print(f"one vmapped call : {t_batched * 1e3:9.1f} ms  (first call incl. compile {compile_batched:.1f} s)")
    print(f"loop of {B:3d} calls: {t_loop * 1e3:9.1f} ms  ({t_loop / B * 1e3:.1f} ms per example; "
          f"compile {compile_one:.1f} s)")
    print(f"speed-up {t_loop / t_batched:.2f}x; max |batched - loop| = {diff:.2e}; "
          f"compiled variants of attention_maps_fn: {traces} (batch {B} and batch 1)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return res


if __name__ == "__main__":
    main()
