"""Performance accounting and measurement: FLOPs per token, device matmul peak, MFU,
train-step compile/step time, peak memory and KV-cache decode speed.

MFU is model FLOPs per second over the *measured* peak matmul throughput of the current
device in the same dtype (a large square matmul timed by :func:`measure_peak_flops`), so
the figure is honest on every device, including CPUs without a published peak.

FLOPs are counted with the standard formula (PaLM appendix B; nanoGPT's ``estimate_mfu``)::

    training FLOPs per token = 6 * N + 12 * L * H * K * T

where ``N`` counts the parameters that take part in matrix multiplies (every block's
weight matrices and the output head, ``D * V``; embedding *lookups*, norms and biases do
no matmul work) and the second term is attention's ``Q K^T`` and ``weights V`` products
over a context of ``T`` (counted in full, as the formula does, although a causal mask
could skip half). Forward only is one third of it (``2 N + 4 L H K T``).
"""
from __future__ import annotations

import collections
import glob
import os
import resource
import tempfile
import time
from typing import Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.profiler import ProfileData

from jaxformer.infer.generation import generate
from jaxformer.model.modules import GPT
from jaxformer.training.steps import (compute_config, init_params, make_optimizer, make_train_step,
                                      micro_batches, step_kernels)

__all__ = ["matmul_params", "flops_per_token", "measure_peak_flops", "peak_memory_mb",
           "time_fn", "compile_time", "build_train_step", "bench_train_step", "bench_decode",
           "top_device_ops"]


def matmul_params(config) -> int:
    """Parameters that take part in matrix multiplies (see the module docstring)."""
    D, H, G, K, F_ = config.d_model, config.n_head, config.kv_heads, config.head_dim, config.d_ff
    attn = D * H * K + 2 * D * G * K + H * K * D
    mlp = 0 if config.attn_only else (3 if config.activation in ("swiglu", "geglu", "geglu_exact") else 2) * D * F_  # gated: 3
    return config.n_layer * (attn + mlp) + D * config.vocab_size


def flops_per_token(config, seq_len: int, training: bool = True) -> float:
    """Model FLOPs per token: ``6 N + 12 L H K T`` for a train step, one third for a forward."""
    attn = 12 * config.n_layer * config.n_head * config.head_dim * seq_len
    total = 6 * matmul_params(config) + attn
    return float(total if training else total / 3)


def time_fn(fn: Callable, *args, warmup: int = 2, iters: int = 10) -> float:
    """Median-free simple timing: seconds per call of ``fn(*args)`` after ``warmup`` calls,
    blocking on the result once at the end (so dispatch overlaps with compute)."""
    out = None
    for _ in range(warmup):
        out = fn(*args)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(iters):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / iters


def measure_peak_flops(dtype="float32", n: Optional[int] = None, iters: int = 10) -> float:
    """Measured matmul throughput (FLOP/s) of the default device: an ``n x n @ n x n``
    product in ``dtype`` (n = 2048 on CPU, 8192 on accelerators), best of three timings."""
    dev = jax.devices()[0]
    n = n or (2048 if dev.platform == "cpu" else 8192)
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.dtype(dtype))
    mm = jax.jit(lambda a, b: a @ b)
    best = min(time_fn(mm, a, b, warmup=2, iters=iters) for _ in range(3))
    return 2.0 * n ** 3 / best


def compile_time(jitted, *args) -> tuple[float, Callable]:
    """Seconds to lower and compile ``jitted`` for ``args``; returns ``(seconds, compiled)``."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return time.perf_counter() - t0, compiled


def peak_memory_mb() -> float:
    """Peak device memory in MB on accelerators (``memory_stats``), peak RSS of this process on CPU."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2 ** 20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if os.uname().sysname != "Darwin" else kb / 2 ** 20


# ----------------------------------------------------------------------------- the benchmark
def _versions() -> dict:
    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}


def build_train_step(config) -> dict:
    """Compile the library's real train step (``training.make_train_step``) on random tokens
    of the configured batch and context. Returns ``{"compiled", "params", "opt_state",
    "batch", "compile_s", "kernels"}`` (``compiled.as_text()`` is the optimized HLO)."""
    tc, mc = config.train, config.model
    params = init_params(config)
    optimizer = make_optimizer(tc, params)
    opt_state = optimizer.init(params)
    kernels = step_kernels(compute_config(config))
    step_fn = make_train_step(config, optimizer, kernels=kernels)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, mc.vocab_size, (tc.batch_size, mc.max_len + 1), dtype=np.int32)
    batch = jnp.asarray(micro_batches(batch, tc.grad_accum))
    compile_s, compiled = compile_time(step_fn, params, opt_state, batch, jnp.int32(0))
    return {"compiled": compiled, "params": params, "opt_state": opt_state, "batch": batch,
            "compile_s": compile_s, "kernels": kernels.name}


def run_train_steps(built: dict, steps: int, start: int = 0) -> float:
    """Run ``steps`` steps of a :func:`build_train_step` result (its params and optimizer
    state advance); seconds from the first dispatch to the last loss being ready."""
    compiled, params, opt_state, batch = (built[k] for k in ("compiled", "params", "opt_state", "batch"))
    t0 = time.perf_counter()
    for i in range(steps):
        params, opt_state, metrics = compiled(params, opt_state, batch, jnp.int32(start + i))
    jax.block_until_ready(metrics["loss"])
    built["params"], built["opt_state"] = params, opt_state
    return time.perf_counter() - t0


def bench_train_step(config, *, steps: int = 10, warmup: int = 2, built: Optional[dict] = None) -> dict:
    """Compile (or take ``built``, from :func:`build_train_step`) and time the train step."""
    tc, mc = config.train, config.model
    built = built or build_train_step(config)
    run_train_steps(built, warmup)
    step_s = run_train_steps(built, steps, start=warmup) / steps
    tokens = tc.batch_size * mc.max_len
    return {"compile_s": built["compile_s"], "step_ms": step_s * 1e3, "tokens_per_s": tokens / step_s,
            "kernels": built["kernels"],
            "model_flops_per_step": flops_per_token(compute_config(config), mc.max_len) * tokens}


def top_device_ops(fn: Callable, *, top: int = 10) -> dict:
    """Profile one call of ``fn()`` (which must block until its work is done):
    ``{"wall_ms", "device_ms", "events", "top": [{"name", "ms", "count", "share"}]}``, the
    ``top`` operations by total device time from the accelerator's "XLA Ops" timeline (its
    streams, or the host's threads on a CPU). ``device_ms / wall_ms`` under 1 means the
    device waited (on the host, on launches or on synchronisation)."""
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            t0 = time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
        files = glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)
        data = ProfileData.from_file(files[0]) if files else None
    totals, counts = collections.Counter(), collections.Counter()
    all_planes = list(data.planes) if data else []
    planes = [p for p in all_planes if p.name.startswith("/device:")]
    for plane in planes or [p for p in all_planes if p.name == "/host:CPU"]:
        lines = list(plane.lines)
        lines = ([ln for ln in lines if ln.name == "XLA Ops"] or [ln for ln in lines if ln.name.startswith("Stream")]
                 or [ln for ln in lines if ln.name not in ("python", "XLA Modules", "Steps")])
        for line in lines:
            for event in line.events:
                totals[event.name] += event.duration_ns
                counts[event.name] += 1
    whole = sum(totals.values())
    return {"wall_ms": wall * 1e3, "device_ms": whole / 1e6, "events": sum(counts.values()),
            "top": [{"name": name, "ms": ns / 1e6, "count": counts[name], "share": ns / max(whole, 1)}
                    for name, ns in totals.most_common(top)]}


def decode_runner(config, *, batch: int = 1, prompt_len: int = 16, new_tokens: int = 64) -> tuple[Callable, int]:
    """A compiled, warmed-up greedy KV-cache decode of ``new_tokens`` for ``batch`` random
    prompts: ``(run, new_tokens)``; ``run()`` blocks until the tokens are ready."""
    mc = config.model
    new_tokens = max(1, min(new_tokens, mc.max_len - prompt_len))
    model = GPT(mc, rngs=nnx.Rngs(0))
    prompts = np.random.default_rng(0).integers(0, mc.vocab_size, (batch, prompt_len))

    def run():
        out = generate(model, prompts, max_new_tokens=new_tokens, temperature=0.0)
        jax.block_until_ready(out.tokens)
        return out

    run()  # compile
    return run, new_tokens


def bench_decode(config, *, batch: int = 1, prompt_len: int = 16, new_tokens: int = 64) -> float:
    """Greedy KV-cache decoding speed (new tokens per second, all rows counted)."""
    run, new_tokens = decode_runner(config, batch=batch, prompt_len=prompt_len, new_tokens=new_tokens)
    t0 = time.perf_counter()
    run()
    return batch * new_tokens / (time.perf_counter() - t0)


def run_benchmark(config, *, steps: int = 10, decode: bool = True,
                  peak_flops: Optional[float] = None) -> dict:
    """Everything ``jaxformer bench`` reports, as one dict (see the module docstring)."""
    dtype = compute_config(config).dtype
    result = {"device": str(jax.devices()[0].device_kind), "platform": jax.devices()[0].platform,
              "dtype": dtype, **_versions()}
    result.update(bench_train_step(config, steps=steps))
    peak = peak_flops or measure_peak_flops(dtype)
    result["peak_flops"] = peak
    result["mfu"] = result["model_flops_per_step"] / (result["step_ms"] / 1e3) / peak
    result["peak_memory_mb"] = peak_memory_mb()
    result["decode_tokens_per_s"] = bench_decode(config) if decode and config.model.causal else None  # encoders: none
    result["config"] = config.to_dict()
    return result
