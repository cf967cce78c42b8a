"""Peak host memory of :func:`jaxformer.interop.load_hf` on a TinyLlama-1.1B-shaped checkpoint.

Writes a random Llama checkpoint in bfloat16 safetensors, sharded with a
``model.safetensors.index.json`` (vocabulary 32000, width 2048, MLP 5632, 22 layers, 32 heads,
4 kv heads: 1.1B parameters, about 2.2 GB), directly with ``safetensors`` (no ``transformers``,
so nothing else sits in memory), then loads it with ``load_hf(dtype="bfloat16")`` in a fresh
subprocess and reports that process's peak resident memory (``ru_maxrss``) and its resident
memory just before the load (after ``import jax, jaxformer``), against the bytes of the
loaded weights.

    python benchmarks/load_memory.py                    # TinyLlama shape, ~2.2 GB in a temp dir
    python benchmarks/load_memory.py --small            # a 4-layer model, a few seconds
    python benchmarks/load_memory.py --dir /data/tl --keep --json out.json

The target is a peak at most 1.3x the weights' bytes: each leaf is filled in an aligned host
buffer that ``jax.device_put`` adopts without a copy on the CPU, one tensor read (without
mapping the file) at a time.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

TINYLLAMA = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048)
SMALL = dict(vocab_size=8000, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512)


def tensor_shapes(c: dict) -> dict:
    """Every tensor of a Llama checkpoint of shape ``c`` (transformers' names), in file order."""
    D, F, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    K = D // c["num_attention_heads"]
    G = c["num_key_value_heads"] * K
    shapes = {"model.embed_tokens.weight": (V, D)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
                       p + "self_attn.q_proj.weight": (D, D), p + "self_attn.k_proj.weight": (G, D),
                       p + "self_attn.v_proj.weight": (G, D), p + "self_attn.o_proj.weight": (D, D),
                       p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
                       p + "mlp.down_proj.weight": (D, F)})
    shapes.update({"model.norm.weight": (D,), "lm_head.weight": (V, D)})
    return shapes


def write_checkpoint(folder: pathlib.Path, c: dict, shard_bytes: int, seed: int = 0) -> int:
    """Write config.json and bf16 shards + index; returns the weights' bytes."""
    import ml_dtypes
    from safetensors.numpy import save_file
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(c)
    total = sum(int(np.prod(s)) * 2 for s in shapes.values())
    n_shards = max(1, -(-total // shard_bytes))
    weight_map, shard, size, k = {}, {}, 0, 0

    def flush():
        nonlocal shard, size, k
        k += 1
        name = f"model-{k:05d}-of-{n_shards:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({t: name for t in shard})
        shard, size = {}, 0

    for name, shape in shapes.items():
        a = rng.standard_normal(shape, dtype=np.float32) * 0.02
        if name.endswith("norm.weight"):
            a += 1.0
        shard[name] = a.astype(ml_dtypes.bfloat16)
        size += shard[name].nbytes
        if size >= shard_bytes:
            flush()
    if shard:
        flush()
    if k != n_shards:   # fix the "-of-" in the names when the estimate was off
        for old in sorted(set(weight_map.values())):
            new = old.replace(f"-of-{n_shards:05d}", f"-of-{k:05d}")
            (folder / old).rename(folder / new)
            weight_map = {t: (new if v == old else v) for t, v in weight_map.items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    config = dict(c, architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                  rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None, tie_word_embeddings=False,
                  attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return total


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(folder: str, dtype: str) -> None:
    """Runs in the fresh subprocess: import, measure, load, measure; prints one JSON line."""
    import resource
    import jax
    import jaxformer  # noqa: F401
    from jaxformer.interop import load_hf
    before = _rss_bytes()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    model, cfg, _ = load_hf(folder, dtype=dtype)
    leaves = jax.tree.leaves(model.params())
    jax.block_until_ready(leaves)
    seconds = time.perf_counter() - t0
    weights = sum(x.nbytes for x in leaves)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"weights_bytes": weights, "rss_before_bytes": before, "peak_before_load_bytes": peak_before,
                      "peak_rss_bytes": peak, "rss_after_bytes": _rss_bytes(), "load_s": seconds,
                      "n_params": sum(x.size for x in leaves), "device": str(jax.devices()[0])}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint (with --dir)")
    p.add_argument("--reuse", action="store_true", help="reuse a checkpoint already in --dir")
    p.add_argument("--small", action="store_true", help="a 4-layer, 8000-token model instead (quick)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--shard-mb", type=int, default=1000, help="shard size in MB (default 1000)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the figures as JSON")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.dtype)
        return 0
    shape = SMALL if args.small else TINYLLAMA
    tmp = None
    folder = pathlib.Path(args.dir) if args.dir else pathlib.Path(tmp := tempfile.mkdtemp(prefix="load_memory_"))
    try:
        if args.reuse and (folder / "config.json").is_file():
            print(f"reusing the checkpoint in {folder}")
        else:
            need = sum(int(np.prod(s)) * 2 for s in tensor_shapes(shape).values())
            free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
            if free < 1.2 * need:
                print(f"error: {folder} has {free / 1e9:.1f} GB free, the checkpoint needs {need / 1e9:.1f} GB",
                      file=sys.stderr)
                return 2
            t0 = time.perf_counter()
            total = write_checkpoint(folder, shape, args.shard_mb * 10**6)
            print(f"wrote {total / 1e9:.2f} GB of bf16 weights to {folder} in {time.perf_counter() - t0:.0f} s")
        out = subprocess.run([sys.executable, __file__, "--child", str(folder), "--dtype", args.dtype],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r.update(shape="small" if args.small else "tinyllama-1.1b", dtype=args.dtype,
                 peak_over_weights=r["peak_rss_bytes"] / r["weights_bytes"],
                 load_increase_over_weights=(r["peak_rss_bytes"] - r["rss_before_bytes"]) / r["weights_bytes"])
        gb = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
        print(f"load_hf(dtype={args.dtype!r}) of {r['n_params']:,} parameters on {r['device']}: {r['load_s']:.1f} s")
        print(f"  weights {gb(r['weights_bytes'])}; RSS before loading {gb(r['rss_before_bytes'])} "
              f"(after imports); peak RSS {gb(r['peak_rss_bytes'])}; RSS after {gb(r['rss_after_bytes'])}")
        print(f"  peak RSS / weights = {r['peak_over_weights']:.3f}; "
              f"(peak - before) / weights = {r['load_increase_over_weights']:.3f}")
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    finally:
        if tmp is not None or (args.dir and not args.keep and not args.reuse):
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
