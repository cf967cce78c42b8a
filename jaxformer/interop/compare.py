"""Compare jaxformer with Hugging Face ``transformers`` on a checkpoint of any supported family
(Llama, Mistral, Qwen2/3, Gemma 1/2, GPT-NeoX, GPT-2; needs the hf extra).

    python -m jaxformer.interop.compare PATH_OR_NAME [--batch 2] [--seq 1024] [--new-tokens 50]
    python -m jaxformer.interop.compare --random-124m      # GPT-2 small shape, random weights

Loads the same checkpoint into both, runs the same random tokens ``[batch, seq]`` through
each and prints the largest absolute logits difference, then decodes ``--new-tokens``
greedily with ``jaxformer.generate`` and ``transformers`` ``generate(do_sample=False)`` and
prints whether the token ids agree (and the text when the folder has a tokenizer).
Nothing is downloaded: a name must already be in the local Hugging Face cache.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformer.data.hf_tokenizer import resolve_hf_path
from jaxformer.errors import JaxformerError, require_extra
from jaxformer.infer.generation import generate
from jaxformer.interop.hf_files import load_hf


def compare(folder, *, batch: int = 2, seq: int = 1024, new_tokens: int = 50, prompt=None,
            seed: int = 0, out=print) -> dict:
    """Run the comparison on a local Hugging Face folder; returns the figures it prints."""
    require_extra("hf", "torch", "transformers", what="python -m jaxformer.interop.compare")
    import torch
    import transformers

    t0 = time.perf_counter()
    model, cfg, tok = load_hf(folder)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).float().eval()
    hf_load_s = time.perf_counter() - t0
    out(f"checkpoint: {folder}")
    out(f"  {model.num_params():,} parameters; {cfg.n_layer} layers, {cfg.n_head} heads, width "
        f"{cfg.d_model}, context {cfg.max_len}, vocabulary {cfg.vocab_size}")
    out(f"  load: jaxformer.interop.load_hf {load_s:.2f} s, transformers.from_pretrained {hf_load_s:.2f} s")

    seq = min(seq, cfg.max_len)
    tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, seq))
    t0 = time.perf_counter()
    with jax.default_matmul_precision("highest"):   # full float32 matmuls (no TF32 on GPUs)
        ours = np.asarray(nnx.jit(lambda m, t: m(t))(model, jnp.asarray(tokens)))
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = hf(torch.from_numpy(tokens)).logits.numpy()
    ref_s = time.perf_counter() - t0
    diff = float(np.abs(ours - ref).max())
    out(f"logits [B={batch}, T={seq}, V={cfg.vocab_size}] float32: max |jaxformer - transformers| = "
        f"{diff:.2e} (largest |logit| {np.abs(ref).max():.2f}); argmax agrees at "
        f"{np.mean(ours.argmax(-1) == ref.argmax(-1)) * 100:.2f}% of positions")
    out(f"  forward: jaxformer {ours_s:.2f} s (including compilation), transformers {ref_s:.2f} s")

    if prompt is None:
        ids = tok.encode("The meaning of life is") if tok is not None else [464, 3616, 286, 1204, 318]
        ids = [i % cfg.vocab_size for i in ids]
    else:
        ids = tok.encode(prompt) if tok is not None else [int(t) for t in prompt.split(",")]
    new_tokens = min(new_tokens, cfg.max_len - len(ids))
    with jax.default_matmul_precision("highest"):
        ours_ids = generate(model, ids, max_new_tokens=new_tokens, temperature=0.0).tokens[0]
    with torch.no_grad():
        ref_ids = hf.generate(torch.tensor([ids]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False, attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              pad_token_id=0, eos_token_id=None)[0, len(ids):].numpy()
    same = int(np.sum(ours_ids == ref_ids))
    out(f"greedy decoding, {new_tokens} new tokens after a {len(ids)}-token prompt: "
        f"{'identical token ids' if same == new_tokens else f'{same}/{new_tokens} token ids agree'}")
    if tok is not None:
        out(f"  jaxformer:    {tok.decode(ids + ours_ids.tolist())!r}")
        out(f"  transformers: {tok.decode(ids + ref_ids.tolist())!r}")
    return {"logits_max_abs_diff": diff, "load_s": load_s, "hf_load_s": hf_load_s,
            "greedy_identical": same == new_tokens}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxformer.interop.compare", description=__doc__.split("\n")[0])
    p.add_argument("path", nargs="?", help="a Hugging Face folder or a name in the local Hugging Face cache")
    p.add_argument("--random-124m", action="store_true",
                   help="build GPT-2 small (124M) with random weights in a temporary folder instead")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--new-tokens", type=int, default=50)
    p.add_argument("--prompt", default=None, help="prompt text (comma-separated ids without a tokenizer)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if (args.path is None) == (not args.random_124m):
        p.error("give PATH_OR_NAME or --random-124m")
    try:
        require_extra("hf", "torch", "transformers", what="python -m jaxformer.interop.compare")
        if args.random_124m:
            import torch
            import transformers
            torch.manual_seed(args.seed)
            hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())
            with tempfile.TemporaryDirectory() as tmp:
                hf.save_pretrained(tmp)
                del hf
                compare(tmp, batch=args.batch, seq=args.seq, new_tokens=args.new_tokens,
                        prompt=args.prompt, seed=args.seed)
        else:
            compare(resolve_hf_path(args.path), batch=args.batch, seq=args.seq,
                    new_tokens=args.new_tokens, prompt=args.prompt, seed=args.seed)
    except JaxformerError as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
