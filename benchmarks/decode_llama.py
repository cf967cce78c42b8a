"""Decode throughput of a Llama-family model: jaxformer vs Hugging Face ``transformers``, same run.

A random SmolLM-135M-shaped ``LlamaForCausalLM`` (vocabulary 49152, width 576, MLP 1536,
30 layers, 9 query heads and 3 key/value heads of width 64, tied embeddings, RoPE theta
1e4, context 2048, RMS norm eps 1e-5; float32) is built by ``transformers`` from its config
(random init, nothing downloaded), written with ``save_pretrained`` to a temporary folder and
read back into jaxformer by ``jaxformer.interop.load_hf``: the benchmark covers the
conversion too. Before timing, the two models' logits on one prompt are compared.

Then greedy decoding of ``--new`` tokens after random ``--prompt``-token prompts, for each
batch size: one warm-up call each (compilation for jaxformer), then ``--rounds`` rounds that
alternate jaxformer and transformers, so load on a shared host hits both alike; each
library's best round is reported and the ratio is taken between bests of the same run.
tokens/s counts the new tokens of all rows (prefill included for both). jaxformer decodes
through one :class:`jaxformer.infer.generation.Generator` (weights laid out for the decode loop once, as a
serving loop would); transformers through ``model.generate`` with its KV cache and default
attention (``sdpa``), ``torch.inference_mode``, ``--threads`` torch threads (default:
torch's own). Neither stops early (no end-of-text token), and the greedy tokens of both
are compared row by row (``agreement``: rows identical over all new tokens; for the others,
the first step where they part, which a near tie between two logits can cause on a random
model's flat distributions).

    python benchmarks/decode_llama.py --json /tmp/decode_llama.json          # full run
    python benchmarks/decode_llama.py --quick                                # small smoke config
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

SMOLLM_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
                   rope_theta=10000.0, max_position_embeddings=2048, rms_norm_eps=1e-5)
QUICK = dict(SMOLLM_135M, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def build_hf(shape: dict, folder: str, seed: int = 0):
    """A random ``LlamaForCausalLM`` of ``shape`` (float32, eval mode), saved to ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**shape, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config.eos_token_id = None    # no early stop, no end-of-text suppression
    model.generation_config.pad_token_id = 0
    model.save_pretrained(folder)
    return model


def load_jaxformer(folder: str):
    """``(Generator, ModelConfig)`` of the saved folder, through ``jaxformer.interop.load_hf``."""
    from jaxformer.infer.generation import Generator
    from jaxformer.interop import load_hf

    model, config, _ = load_hf(folder, dtype="float32")
    return Generator(model), model, config


def logits_gap(hf_model, jx_model, prompt_T) -> tuple:
    """``(largest |jaxformer - transformers| logit, largest |logit|)`` over one prompt."""
    import jax.numpy as jnp
    import torch

    with torch.inference_mode():
        ref = hf_model(torch.tensor([prompt_T])).logits[0].numpy()
    got = np.asarray(jx_model(jnp.asarray([prompt_T], jnp.int32))[0])
    return float(np.max(np.abs(got - ref))), float(np.max(np.abs(ref)))


def jax_run(gen, prompts_BT, new: int):
    from jaxformer.infer.generation import generate
    out = generate(gen, prompts_BT, max_new_tokens=new, temperature=0)
    return np.asarray(out.tokens)


def hf_run(model, prompts_BT, new: int):
    import torch
    ids = torch.tensor(prompts_BT)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             do_sample=False, use_cache=True, pad_token_id=0)
    return out[:, ids.shape[1]:].numpy()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def agreement(a_BN, b_BN) -> dict:
    """Rows with identical tokens, and where the other rows first differ."""
    same = [bool(np.array_equal(x, y)) for x, y in zip(a_BN, b_BN)]
    first = [int(np.argmax(x != y)) for x, y, s in zip(a_BN, b_BN, same) if not s]
    return {"rows_identical": int(sum(same)), "rows": len(same), "first_difference_at": first}


def bench_batch(gen, hf_model, vocab: int, B: int, prompt: int, new: int, rounds: int, seed: int) -> dict:
    prompts = np.random.default_rng(seed + B).integers(0, vocab, (B, prompt)).tolist()
    first_jax, toks_jax = timed(lambda: jax_run(gen, prompts, new))
    first_hf, toks_hf = timed(lambda: hf_run(hf_model, prompts, new))
    assert toks_jax.shape == toks_hf.shape == (B, new), (toks_jax.shape, toks_hf.shape)
    t_jax, t_hf = [], []
    for _ in range(rounds):                      # alternate, so both see the same load
        t, out = timed(lambda: jax_run(gen, prompts, new))
        t_jax.append(t)
        assert np.array_equal(out, toks_jax)     # greedy decoding is deterministic
        t, _ = timed(lambda: hf_run(hf_model, prompts, new))
        t_hf.append(t)
    tok = lambda ts: B * new / min(ts)  # noqa: E731
    return {"batch": B, "jaxformer_tok_s": tok(t_jax), "hf_tok_s": tok(t_hf),
            "ratio": tok(t_jax) / tok(t_hf), "jaxformer_s": t_jax, "hf_s": t_hf,
            "jaxformer_first_call_s": first_jax, "hf_first_call_s": first_hf,
            "agreement": agreement(toks_jax, toks_hf)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 8)")
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens (default 16)")
    ap.add_argument("--new", type=int, default=None, help="new tokens (default 128)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per library (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a 2-layer width-64 Llama, batches 1 2, "
                    "16 new tokens, 1 round: a smoke test of the whole path")
    ap.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    shape = QUICK if args.quick else SMOLLM_135M
    batches = args.batches or ([1, 2] if args.quick else [1, 8])
    new = args.new or (16 if args.quick else 128)
    rounds = args.rounds or (1 if args.quick else 3)
    for name, v in (("--prompt", args.prompt), ("--new", new), ("--rounds", rounds),
                    ("--threads", args.threads if args.threads is not None else 1)) + \
            tuple(("--batches", b) for b in batches):
        if v < 1:
            print(f"decode_llama: error: {name}={v} must be >= 1", file=sys.stderr)
            return 2
    if args.prompt + new > shape["max_position_embeddings"]:
        print(f"decode_llama: error: --prompt + --new = {args.prompt + new} exceeds the context "
              f"{shape['max_position_embeddings']}", file=sys.stderr)
        return 2

    import jax
    import torch
    import transformers
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="decode_llama_") as folder:
        t0 = time.perf_counter()
        hf_model = build_hf(shape, folder, args.seed)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        gen, jx_model, cfg = load_jaxformer(folder)
        t_load = time.perf_counter() - t0
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(jx_model.params()))
    gap, scale = logits_gap(hf_model, jx_model, list(range(1, args.prompt + 1)))
    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "jax_backend": jax.default_backend(), "torch_threads": torch.get_num_threads(),
           "shape": shape, "params": n_params, "prompt": args.prompt, "new_tokens": new,
           "rounds": rounds, "hf_build_and_save_s": t_build, "load_hf_s": t_load,
           "logits_max_abs_diff": gap, "logits_max_abs": scale,
           "jaxformer_config": {k: getattr(cfg, k) for k in ("d_model", "n_head", "n_kv_head", "head_dim",
                                                              "n_layer", "d_ff", "norm", "activation",
                                                              "positions", "tie_embeddings", "kernels")},
           "runs": []}
    print(f"{n_params:,} parameters; built+saved by transformers in {t_build:.1f} s, load_hf {t_load:.1f} s; "
          f"logits max |diff| {gap:.2e} (max |logit| {scale:.2f}); torch threads {torch.get_num_threads()}",
          flush=True)
    for B in batches:
        row = bench_batch(gen, hf_model, shape["vocab_size"], B, args.prompt, new, rounds, args.seed)
        res["runs"].append(row)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                          if not k.endswith("_s") or k.endswith("tok_s")}), flush=True)
    print("\n| batch | jaxformer tok/s | transformers tok/s | ratio | greedy rows identical |")
    print("|---|---|---|---|---|")
    for r in res["runs"]:
        a = r["agreement"]
        diff = f" (first difference at step {a['first_difference_at']})" if a["first_difference_at"] else ""
        print(f"| {r['batch']} | {r['jaxformer_tok_s']:.1f} | {r['hf_tok_s']:.1f} | {r['ratio']:.2f} | "
              f"{a['rows_identical']}/{a['rows']}{diff} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
