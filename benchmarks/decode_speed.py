"""Decode throughput: jaxformer's KV-cache generation vs Hugging Face ``transformers``.

GPT-2-small-shaped random models (124M parameters, float32), a 16-token prompt, 200 new
tokens, greedy, batch 1 and 8. Both libraries are measured in the same process, after a
warm-up call (compilation for jaxformer), best of ``--repeats`` runs; tokens/s counts new
tokens of all rows (prefill time included for both). Also measures the memory-bandwidth
floor: the time to read the model's weights once (a float32 matrix-vector product over a
matrix as large as all the parameters, in NumPy and in XLA, the faster taken), which bounds
batch-1 decoding from above at ``bandwidth / parameter bytes`` tokens/s.

    python benchmarks/decode_speed.py                 # full run (about 3 minutes on 2 cores)
    python benchmarks/decode_speed.py --batches 1 --new 50 --repeats 1   # quick look
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformer import GPT, ModelConfig
from jaxformer.infer.generation import generate


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bandwidth_floor(n_bytes: int, repeats: int) -> dict:
    """Seconds to stream ``n_bytes`` of float32 once (matrix-vector product), NumPy and XLA."""
    D = 768
    rows = n_bytes // 4 // D
    w = np.random.default_rng(0).standard_normal((rows, D), dtype=np.float32)
    v = np.ones((D,), np.float32)
    t_np = best_time(lambda: w @ v, repeats + 2)
    wj, vj = jnp.asarray(w), jnp.asarray(v)
    w = None  # free the host copy
    mv = jax.jit(lambda a, b: a @ b)
    mv(wj, vj).block_until_ready()
    t_xla = best_time(lambda: mv(wj, vj).block_until_ready(), repeats + 2)
    t = min(t_np, t_xla)
    return {"bytes": rows * D * 4, "numpy_s": t_np, "xla_s": t_xla,
            "gb_per_s": rows * D * 4 / t / 1e9}


def bench_jaxformer(batch: int, prompt_len: int, new: int, repeats: int) -> dict:
    cfg = ModelConfig(vocab_size=50257, d_model=768, n_head=12, n_layer=12, d_ff=3072,
                      max_len=1024, positions="learned", activation="gelu")
    model = GPT(cfg, rngs=nnx.Rngs(0))
    prompts = np.random.default_rng(1).integers(0, cfg.vocab_size, (batch, prompt_len)).tolist()
    run = lambda: generate(model, prompts, max_new_tokens=new, temperature=0)  # noqa: E731
    t0 = time.perf_counter()
    out = run()
    first = time.perf_counter() - t0
    assert out.tokens.shape == (batch, new) and (out.tokens >= 0).all()
    t = best_time(run, repeats)
    return {"seconds": t, "tokens_per_s": batch * new / t, "first_call_s": first,
            "param_bytes": 4 * model.num_params()}


def bench_hf(batch: int, prompt_len: int, new: int, repeats: int) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    ids = torch.randint(0, 50257, (batch, prompt_len))
    mask = torch.ones_like(ids)

    def run():
        with torch.no_grad():
            return model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                  do_sample=False, use_cache=True, pad_token_id=0)
    run()
    t = best_time(run, repeats)
    return {"seconds": t, "tokens_per_s": batch * new / t, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()

    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "jax": jax.__version__, "prompt": args.prompt, "new_tokens": args.new, "runs": []}
    for B in args.batches:
        j = bench_jaxformer(B, args.prompt, args.new, args.repeats)
        row = {"batch": B, "jaxformer_tok_s": j["tokens_per_s"], "jaxformer_first_call_s": j["first_call_s"]}
        res["param_bytes"] = j["param_bytes"]
        if not args.skip_hf:
            h = bench_hf(B, args.prompt, args.new, args.repeats)
            row.update(hf_tok_s=h["tokens_per_s"], ratio=j["tokens_per_s"] / h["tokens_per_s"])
        res["runs"].append(row)
        print(json.dumps(row), flush=True)
    bw = bandwidth_floor(res["param_bytes"], args.repeats)
    res["bandwidth"] = bw
    floor = bw["gb_per_s"] * 1e9 / res["param_bytes"]
    res["floor_tok_s_batch1"] = floor
    print(f"\nweights {res['param_bytes'] / 1e6:.0f} MB; streaming them once: {bw['gb_per_s']:.1f} GB/s "
          f"(numpy {bw['numpy_s'] * 1e3:.1f} ms, XLA {bw['xla_s'] * 1e3:.1f} ms) -> batch-1 floor "
          f"{floor:.1f} tokens/s")
    print("| batch | jaxformer tok/s | transformers tok/s | ratio | % of bandwidth floor |")
    print("|---|---|---|---|---|")
    for r in res["runs"]:
        # The weight-streaming floor bounds batch 1 only (larger batches reuse each weight).
        pct = f"{100 * r['jaxformer_tok_s'] / floor:.0f}%" if r["batch"] == 1 else "-"
        print(f"| {r['batch']} | {r['jaxformer_tok_s']:.1f} | {r.get('hf_tok_s', float('nan')):.1f} | "
              f"{r.get('ratio', float('nan')):.2f} | {pct} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
