"""The matrix products of one train step, timed one by one in JAX and in PyTorch.

A train step of the decoder is mostly matrix products. This script lists every product
the step runs (shapes and operand layouts as the CPU kernel set ``jaxformer.model.kernels.cpu`` issues them: the
projections' forward, input-gradient and weight-gradient products, the attention core's
five batched products plus its forward two, and the tied head's three), times each one
on its own in JAX (one jitted ``einsum``) and in PyTorch (``torch.einsum``, same thread
count), and sums them with their multiplicities. It prints:

- per product: FLOPs, JAX and PyTorch GFLOP/s, and the time both spend per step on it;
- the *GEMM floor* of each framework: the step time if everything except these products
  took no time at all;
- the measured full train steps of both (``jaxformer bench``'s measurement), side by side.

If JAX's GEMM floor is already close to PyTorch's whole step, no change to the model
code can make the JAX step faster than PyTorch's: the rest of the gap is the matrix
library's throughput at these shapes.

    python benchmarks/gemm_ceiling.py --config configs/shakespeare_char_cpu.yaml
    python benchmarks/gemm_ceiling.py --config configs/default.yaml --steps 3 [--json out.json]
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer import load_config


def products(m, batch: int):
    """``(name, equation, lhs shape, rhs shape, count per step)`` for every matrix product."""
    N, D, F, V = batch * m.max_len, m.d_model, m.d_ff, m.vocab_size
    H, G, K, T, L = m.n_head, m.kv_heads, m.head_dim, m.max_len, m.n_layer
    R = H // G
    n_in = 2 if m.activation == "swiglu" else 1
    out = []
    # Projections: forward x @ w; input gradient g @ w^T; weight gradient (x^T, materialised) @ g.
    for name, din, dout, count in (("wq", D, H * K, 1), ("wk/wv", D, G * K, 2), ("wo", H * K, D, 1),
                                   ("w_in", D, F, n_in)):
        out += [(f"{name} fwd", "nk,km->nm", (N, din), (din, dout), L * count),
                (f"{name} dx", "nm,km->nk", (N, dout), (din, dout), L * count),
                (f"{name} dw", "kn,nm->km", (din, N), (N, dout), L * count)]
    out += [("w_out fwd", "nk,km->nm", (N, F), (F, D), L),
            ("w_out dx", "nm,km->nk", (N, D), (F, D), L),
            ("w_out dw", "nk,nm->km", (N, F), (N, D), L)]  # left to XLA (transposed lhs)
    # Attention core (batch b = B*G, R query heads per key head folded into the rows).
    b = batch * G
    out += [("attn q.k fwd", "bqd,bkd->bqk", (b, R * T, K), (b, T, K), L),
            ("attn p.v fwd", "bqk,bkd->bqd", (b, R * T, T), (b, T, K), L),
            ("attn k.q bwd (recompute)", "bkd,bqd->bkq", (b, T, K), (b, R * T, K), L),
            ("attn dv", "bkq,bqd->bkd", (b, T, R * T), (b, R * T, K), L),
            ("attn v.do bwd", "bkd,bqd->bkq", (b, T, K), (b, R * T, K), L),
            ("attn dk", "bkq,bqd->bkd", (b, T, R * T), (b, R * T, K), L),
            ("attn dq", "bkq,bkd->bqd", (b, T, R * T), (b, T, K), L)]
    # Tied output head.
    out += [("head fwd", "nd,vd->nv", (N, D), (V, D), 1),
            ("head dx", "nv,vd->nd", (N, V), (V, D), 1),
            ("head dw", "nv,nd->vd", (N, V), (N, D), 1)]
    return out


def flops(eq: str, sa, sb) -> int:
    dims = {}
    for spec, shape in zip(eq.split("->")[0].split(","), (sa, sb)):
        dims.update(zip(spec, shape))
    return 2 * int(np.prod(list(dims.values())))


def best_time(fn, target_s: float = 0.2, rounds: int = 5) -> float:
    out = fn()
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    iters = max(3, int(target_s / max(time.perf_counter() - t0, 1e-6)))
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(iters):
            out = fn()
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / iters)
    return best


def torch_gpt():
    """The eager PyTorch GPT module (benchmarks/torch_baseline.py, imported here: this script
    is also imported by path from the tests, where benchmarks/ is not on sys.path)."""
    from torch_baseline import torch_gpt as load

    return load()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/shakespeare_char_cpu.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=20, help="train steps timed for the full-step figures")
    ap.add_argument("--no-steps", action="store_true", help="skip the full train steps")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    import torch
    from jaxformer.training.bench import bench_train_step
    time_train_step = torch_gpt().time_train_step

    cfg = load_config(args.config, args.overrides)
    m, tc = cfg.model, cfg.train
    rng = np.random.default_rng(0)
    rows, jax_total, torch_total, total_flops = [], 0.0, 0.0, 0
    print(f"{args.config}: jax {jax.__version__} on {jax.devices()[0].device_kind}, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    print(f"| product | equation | shapes | per step | JAX GFLOP/s | PyTorch GFLOP/s | JAX ms/step | PyTorch ms/step |")
    print("|---|---|---|---|---|---|---|---|")
    for name, eq, sa, sb, count in products(m, tc.batch_size):
        a = rng.standard_normal(sa, dtype=np.float32)
        b = rng.standard_normal(sb, dtype=np.float32)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        f = jax.jit(lambda x, y, eq=eq: jnp.einsum(eq, x, y))
        tj = best_time(lambda: f(ja, jb))
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        tt = best_time(lambda: torch.einsum(eq, ta, tb))
        fl = flops(eq, sa, sb)
        jax_total += count * tj
        torch_total += count * tt
        total_flops += count * fl
        rows.append({"product": name, "equation": eq, "lhs": sa, "rhs": sb, "count": count,
                     "jax_gflops": fl / tj / 1e9, "torch_gflops": fl / tt / 1e9,
                     "jax_ms_per_step": count * tj * 1e3, "torch_ms_per_step": count * tt * 1e3})
        r = rows[-1]
        print(f"| {name} | `{eq}` | {sa} x {sb} | {count} | {r['jax_gflops']:.0f} | "
              f"{r['torch_gflops']:.0f} | {r['jax_ms_per_step']:.2f} | {r['torch_ms_per_step']:.2f} |")
    result = {"config": args.config, "overrides": args.overrides, "products": rows,
              "gemm_gflop_per_step": total_flops / 1e9,
              "jax_gemm_floor_ms": jax_total * 1e3, "torch_gemm_floor_ms": torch_total * 1e3}
    print(f"\nGEMM floor (sum of the products alone, {total_flops / 1e9:.2f} GFLOP per step): "
          f"JAX {jax_total * 1e3:.1f} ms, PyTorch {torch_total * 1e3:.1f} ms "
          f"(PyTorch's products {jax_total / torch_total:.2f}x faster)")
    if not args.no_steps:
        j = bench_train_step(cfg, steps=args.steps)
        t = time_train_step(m, tc, steps=args.steps)
        result.update(jax_step_ms=j["step_ms"], torch_step_ms=t["ms_per_step"])
        print(f"full train step: JAX {j['step_ms']:.1f} ms, PyTorch {t['ms_per_step']:.1f} ms "
              f"(JAX/PyTorch throughput {t['ms_per_step'] / j['step_ms']:.2f})")
        print(f"JAX's GEMM floor is {jax_total * 1e3 / t['ms_per_step']:.0%} of PyTorch's whole step; "
              f"non-GEMM work: JAX {j['step_ms'] - jax_total * 1e3:.1f} ms, "
              f"PyTorch {t['ms_per_step'] - torch_total * 1e3:.1f} ms")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
