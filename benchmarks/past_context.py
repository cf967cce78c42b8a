"""Generation past the context: tokens/s for 1,000 new tokens from a model with a short
context (``max_len`` 64 and 256), greedy, batch 1.

Four ways to produce the same text (the model sees the last ``max_len`` tokens, nanoGPT's crop):

- ``jaxformer``: :func:`jaxformer.generate`, the whole loop inside XLA; the KV cache while
  it fits, then a re-prefill of the last ``max_len - 1`` tokens per new token
  (``slide_every=1``, exactly the crop).
- ``jaxformer slide_every=S``: the window re-prefilled every ``S`` tokens (each token sees
  between ``max_len - S + 1`` and ``max_len`` tokens; not the exact crop).
- ``naive crop loop``: a Python loop calling a jitted forward pass on the last ``max_len``
  tokens every step (what the greedy-equality tests compare against).
- ``nanoGPT (PyTorch)``: nanoGPT's ``generate``: an eager PyTorch model of the same
  shape (``tests/jaxformer_testing/torch_gpt.py``), ``idx[:, -block_size:]`` and a full forward
  pass per token, on one thread (``--torch-threads``). Skipped without torch.

Every method is warmed up first (compilation excluded), then timed over ``--repeats`` runs
(best taken), alternating methods so load on the machine hits them alike. The exact
methods are checked to produce the same tokens as the naive loop.

    python benchmarks/past_context.py                  # max_len 64 and 256 (about 4 min on 2 cores)
    python benchmarks/past_context.py --max-lens 64 --new 300 --repeats 1   # quick look
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
from jaxformer import functional as F
from jaxformer.infer.generation import Generator, generate


def model_config(max_len: int) -> ModelConfig:
    """The Tiny Shakespeare CPU recipe's shape (0.8M parameters, 65 characters)."""
    return ModelConfig(vocab_size=65, d_model=128, n_head=4, n_layer=4, d_ff=512, max_len=max_len,
                       bias=False, positions="learned", activation="gelu")


def naive_crop(params, cfg, prompt, new: int) -> list:
    fwd = _forward(cfg)
    out = list(prompt)
    for _ in range(new):
        logits = fwd(params, jnp.asarray([out[-cfg.max_len:]], jnp.int32))
        out.append(int(jnp.argmax(logits[0, -1])))
    return out[len(prompt):]


_FWD = {}


def _forward(cfg):
    if cfg not in _FWD:
        _FWD[cfg] = jax.jit(lambda p, t: F.decoder(p, t, cfg)[0])
    return _FWD[cfg]


def nanogpt(tmodel, prompt, new: int, block_size: int) -> list:
    import torch
    idx = torch.tensor([prompt], dtype=torch.long)
    with torch.no_grad():
        for _ in range(new):
            logits = tmodel(idx[:, -block_size:])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0, len(prompt):].tolist()


def torch_gpt():
    """The eager PyTorch GPT module (benchmarks/torch_baseline.py, imported here: this script
    is also imported by path from the tests, where benchmarks/ is not on sys.path)."""
    from torch_baseline import torch_gpt as load

    return load()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-lens", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--new", type=int, default=1000, help="new tokens per run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="PyTorch threads (default 1: per-token forward passes of a small model are "
                         "overhead-bound, and more threads were slower here)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    try:
        import torch
        build_torch_gpt, load_jax_params = torch_gpt().build_torch_gpt, torch_gpt().load_jax_params
        torch.set_num_threads(args.torch_threads)
    except ImportError:
        torch = None
    prompt = [1, 2, 3, 4, 5, 6]
    rows = []
    for C in args.max_lens:
        cfg = model_config(C)
        model = GPT(cfg, rngs=nnx.Rngs(0))
        params = model.params()
        gen = Generator(model)
        slide = max(2, C // 4)
        methods = {
            "jaxformer (exact)": lambda: generate(gen, prompt, max_new_tokens=args.new, temperature=0).sequences[0],
            f"jaxformer slide_every={slide}": lambda: generate(gen, prompt, max_new_tokens=args.new, temperature=0,
                                                               slide_every=slide).sequences[0],
            "naive crop loop (JAX)": lambda: naive_crop(params, cfg, prompt, args.new),
        }
        if torch is not None:
            tmodel = build_torch_gpt(cfg)
            load_jax_params(tmodel, params)
            tmodel.eval()
            methods["nanoGPT (PyTorch)"] = lambda: nanogpt(tmodel, prompt, args.new, C)
        outputs = {name: fn() for name, fn in methods.items()}          # warm-up (compiles)
        ref = outputs["naive crop loop (JAX)"]
        times = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        for name in methods:
            t = min(times[name])
            same = outputs[name] == ref
            rows.append({"max_len": C, "method": name, "seconds": t, "tokens_per_s": args.new / t,
                         "same_tokens_as_naive": same})
    base = {C: next(r["tokens_per_s"] for r in rows if r["max_len"] == C and r["method"] == "naive crop loop (JAX)")
            for C in args.max_lens}
    print(f"{args.new} new tokens, greedy, batch 1, best of {args.repeats}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}")
    print(f"{'max_len':>7}  {'method':<28} {'tokens/s':>9} {'vs naive':>9}  same tokens as naive")
    for r in rows:
        print(f"{r['max_len']:>7}  {r['method']:<28} {r['tokens_per_s']:>9.0f} "
              f"{r['tokens_per_s'] / base[r['max_len']]:>8.2f}x  {r['same_tokens_as_naive']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
