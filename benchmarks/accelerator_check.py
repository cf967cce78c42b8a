"""One command for the day a GPU or TPU is available: is jaxformer correct there, and how fast?

    python benchmarks/accelerator_check.py --json accelerator_check.json
    python benchmarks/accelerator_check.py --smoke --json OUT       # CPU, small config, seconds

1. Prints the device (platform, kind, count, versions) and the published dense bf16 peak of
   its kind where known.
2. Runs the tests that matter on an accelerator, in a subprocess (``pytest``): the float32
   textbook against float64 references under highest matmul precision, cached == uncached
   decoding, the kernel set == the textbook, and bf16 against float32 (the loss curve, and
   one forward pass). ``--smoke`` runs one quick test of each group.
3. Measures GPT-2 small (124M, context 1024) with bfloat16 compute (float32 parameters) and
   ``model.kernels=auto``: compile time, step time, tokens/s, MFU against the published peak
   and against the measured bf16 matmul peak, peak device memory, and KV-cache decode
   tokens/s at batch 1 and 64. ``--smoke`` measures the toy config at context 64 instead,
   through the same code.
4. Writes everything as one JSON report (``--json``), with ``target_mfu`` (0.45) and whether
   it was met (null where no published peak is known).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:           # run from a fresh clone without installing
    sys.path.insert(0, str(ROOT))

TARGET_MFU = 0.45

#: Published dense bfloat16 matmul peaks (FLOP/s) by ``device_kind`` substring, most specific
#: first (vendor data sheets; no sparsity).
PUBLISHED_BF16_PEAK = (
    ("H100 PCIe", 756e12), ("H100", 989.4e12), ("H200", 989.4e12), ("GH200", 989.4e12),
    ("A100", 312e12), ("L40S", 362.05e12), ("L4", 121e12),
    ("TPU v6 lite", 918e12), ("TPU v5 lite", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12),
    ("TPU v4", 275e12),
)

#: The accelerator test subset: group -> pytest node ids / selections (full, smoke).
TESTS = {
    "float32 vs float64 at highest precision": (
        ["tests/test_functional.py", "tests/test_architectures.py::test_decoder_equals_the_float64_reference"],
        ["tests/test_architectures.py::test_decoder_equals_the_float64_reference[llama3]"]),
    "cached == uncached decoding": (
        ["tests/test_generation.py"],
        ["tests/test_generation.py::test_cached_equals_uncached_greedy[none-rope]"]),
    "kernels == textbook": (
        ["tests/test_kernels.py"],
        ["tests/test_kernels.py::test_gelu_kernel_equals_textbook_float64"]),
    "bf16 vs float32": (
        ["tests/test_training.py::test_bf16_loss_curve_matches_float32",
         "tests/test_modules.py::test_bf16_compute_close_to_float32"],
        ["tests/test_modules.py::test_bf16_compute_close_to_float32"]),
}

#: ``--set`` overrides, applied to every measured config.
SETTINGS: list = []

REPORT_KEYS = ("device", "tests", "train", "train_by_kernels", "decode", "target_mfu", "target_met", "smoke",
               "seconds", "command", "date")

#: Published memory bandwidth (bytes/s) by ``device_kind`` substring, most specific first.
PUBLISHED_BANDWIDTH = (
    ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("GH200", 4.9e12), ("H200", 4.8e12), ("A100-SXM4-80GB", 2.039e12),
    ("A100-PCIE-80GB", 1.935e12), ("A100", 1.555e12), ("L40S", 0.864e12), ("L4", 0.3e12),
)


def published_peak(device_kind: str):
    for key, peak in PUBLISHED_BF16_PEAK:
        if key.lower() in device_kind.lower():
            return peak
    return None


def published_bandwidth(device_kind: str):
    for key, bw in PUBLISHED_BANDWIDTH:
        if key.lower() in device_kind.lower():
            return bw
    return None


def device_info() -> dict:
    import flax
    import jax
    import jaxlib
    import optax

    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "process_count": jax.process_count(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "python": platform.python_version(),
            "published_bf16_peak_flops": published_peak(dev.device_kind)}


def _group_of(node: str, smoke: bool):
    for group, (full, small) in TESTS.items():
        if any(node == sel or node.startswith(sel + "::") or node.startswith(sel + "[")
               for sel in (small if smoke else full)):
            return group
    return None


def _failures(stdout: str) -> list:
    """Failed or erroring test ids from pytest's ``-v`` lines and its summary."""
    found = [ln.split(" FAILED ")[-1].split(" ERROR ")[-1].strip() for ln in stdout.splitlines()
             if (" FAILED " in ln or " ERROR " in ln) and "::" in ln]
    found += [ln for ln in stdout.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    return list(dict.fromkeys(found))[:50]


def run_tests(smoke: bool, workers: int = 0, timeout=None) -> dict:
    """The subset in one pytest subprocess: ``{group: {passed, failed, skipped}}`` plus the
    run's ``seconds`` and ``returncode``."""
    if not (ROOT / "tests").is_dir():
        return {"skipped": f"no tests/ folder beside {ROOT / 'benchmarks'} (run from a clone)"}
    selection = [sel for full, small in TESTS.values() for sel in (small if smoke else full)]
    with tempfile.TemporaryDirectory() as tmp:
        xml = pathlib.Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
               *(["-n", str(workers)] if workers > 1 else []), *([] if smoke else ["-v", "-rfE", "--tb=short"]),
               *dict.fromkeys(selection)]
        # The test processes share the accelerator with this one: no up-front memory grab.
        env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            print(f"  tests did not finish in {timeout} s", flush=True)
            return {"timed_out": timeout, "returncode": -1, "failures": _failures(out),
                    "passed_so_far": out.count(" PASSED"), "tail": out.splitlines()[-20:]}
        seconds = time.perf_counter() - t0
        out = {g: {"passed": 0, "failed": 0, "skipped": 0} for g in TESTS}
        cases = ET.parse(xml).getroot().iter("testcase") if xml.is_file() else ()
        for case in cases:   # junit: classname "tests.test_x", name "test_y[param]"
            node = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
            group = _group_of(node, smoke)
            if group is None:
                continue
            kind = ("failed" if case.find("failure") is not None or case.find("error") is not None
                    else "skipped" if case.find("skipped") is not None else "passed")
            out[group][kind] += 1
    for group, c in out.items():
        status = "ok" if c["failed"] == 0 and c["passed"] > 0 else "FAILED" if c["failed"] else "none ran"
        print(f"  {group:42s} {c['passed']:4d} passed {c['failed']:3d} failed {c['skipped']:3d} skipped  {status}",
              flush=True)
    tail = proc.stdout.splitlines()[-80:]
    if proc.returncode != 0:
        print("\n".join(tail), flush=True)
    print(f"  ({seconds:.0f} s, pytest exit code {proc.returncode})", flush=True)
    failures = _failures(proc.stdout)
    return {"groups": out, "seconds": round(seconds, 1), "returncode": proc.returncode, "workers": workers,
            "failures": failures[:50], "tail": tail if proc.returncode else tail[-3:]}


def bench_config(smoke: bool, batch, kernels: str = "auto", overrides=()):
    """GPT-2 small (or, with ``smoke``, the toy at context 64) in bfloat16 compute."""
    from jaxformer import load_config

    overrides = [*SETTINGS, *overrides]
    if smoke:
        return load_config("toy", ["model.max_len=64", f"train.batch_size={batch or 8}",
                                   "model.dtype=bfloat16", f"model.kernels={kernels}", *overrides])
    return load_config("gpt2_small", [f"train.batch_size={batch or 16}", "model.dtype=bfloat16",
                                      f"model.kernels={kernels}", *overrides])


def compiled_facts(compiled) -> dict:
    """What the optimized HLO of a compiled step says: cuDNN fused-attention calls, and
    XLA's memory plan (arguments + temporaries + outputs - donated aliases), in MB."""
    hlo = compiled.as_text()
    facts = {"cudnn_fused_attention_calls": hlo.count("__cudnn$fmha")}
    try:
        m = compiled.memory_analysis()
        facts["compiled_memory_mb"] = (m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
                                       - m.alias_size_in_bytes) / 2 ** 20
        facts["compiled_temp_mb"] = m.temp_size_in_bytes / 2 ** 20
    except Exception as e:  # not every backend reports a memory plan
        facts["compiled_memory_mb"] = None
        facts["compiled_memory_error"] = f"{type(e).__name__}: {e}"
    return facts


def measure_train(config, steps: int, warmup: int, peaks: tuple, flops_per_step=None, profile=None) -> dict:
    """Compile and time one train step; ``flops_per_step`` (default: this config's) is the
    model work MFU is counted against, so variants of one model are compared on equal terms.
    ``peaks``: (measured, published or None) FLOP/s. ``profile(train) -> bool``: whether to
    profile three more steps of the same compiled program (the top ten device ops)."""
    import jax
    import jax.numpy as jnp

    from jaxformer.training import bench

    mc = config.model
    built = bench.build_train_step(config)
    out = bench.bench_train_step(config, steps=steps, warmup=warmup, built=built)
    out["model_flops_per_step"] = flops_per_step or out["model_flops_per_step"]
    out.update(compiled_facts(built["compiled"]))
    t0 = time.perf_counter()     # dispatch alone: a step that waits on the host shows here
    for i in range(3):
        built["params"], built["opt_state"], metrics = built["compiled"](
            built["params"], built["opt_state"], built["batch"], jnp.int32(10_000 + i))
    out["dispatch_ms_per_step"] = (time.perf_counter() - t0) / 3 * 1e3
    metrics["loss"].block_until_ready()
    out["final_loss"] = float(metrics["loss"])
    out.update(batch=config.train.batch_size, seq=mc.max_len, dtype=mc.dtype, param_dtype=mc.param_dtype,
               parameters=bench.matmul_params(mc),
               param_bytes=int(sum(x.nbytes for x in jax.tree.leaves(built["params"]))))
    add_mfu(out, *peaks)
    if profile is not None and profile(out):
        out["profile"] = {"steps": 3, **bench.top_device_ops(lambda: bench.run_train_steps(built, 3, start=20_000))}
    return out


def add_mfu(train: dict, measured_peak: float, kind_peak) -> dict:
    achieved = train["model_flops_per_step"] / (train["step_ms"] / 1e3)
    train.update(measured_bf16_peak_flops=measured_peak, achieved_flops=achieved,
                 mfu_measured_peak=achieved / measured_peak,
                 mfu_published_peak=achieved / kind_peak if kind_peak else None)
    return train


def print_ops(ops, n: int = 10) -> None:
    for op in ops[:n]:
        print(f"    {op['share']:6.1%} {op['ms']:9.2f} ms  x{op['count']:<5d} {op['name'][:100]}", flush=True)


def step_counts(args) -> tuple[int, int]:
    """(timed steps, warm-up steps) of every train measurement."""
    return args.steps or (3 if args.smoke else 20), 1 if args.smoke else 2


def describe(name: str, t: dict, kind_peak) -> str:
    return (f"  {name}: compile {t['compile_s']:.1f} s, {t['step_ms']:.1f} ms/step "
            f"(dispatch {t['dispatch_ms_per_step']:.1f} ms), {t['tokens_per_s']:,.0f} tok/s, kernels "
            f"{t['kernels']} ({t['cudnn_fused_attention_calls']} cuDNN attention calls in the HLO), MFU "
            f"{t['mfu_measured_peak']:.1%} of measured peak"
            + (f", {t['mfu_published_peak']:.1%} of published {kind_peak / 1e12:.0f} TFLOP/s" if kind_peak else "")
            + (f"; XLA memory plan {t['compiled_memory_mb']:,.0f} MB" if t.get("compiled_memory_mb") else ""))


def measure(args, report: dict, save) -> None:
    """The measurements, each written into ``report`` (and saved) as soon as it is taken."""
    from jaxformer.training import bench

    smoke = args.smoke
    steps, warmup = step_counts(args)
    kind_peak = published_peak(report["device"]["device_kind"])
    measured_peak = bench.measure_peak_flops("bfloat16", n=512 if smoke else None, iters=3 if smoke else 10)
    report["measured_bf16_peak_flops"] = measured_peak
    print(f"  bf16 matmul peak: {measured_peak / 1e12:.1f} TFLOP/s measured"
          + (f", {kind_peak / 1e12:.0f} published" if kind_peak else ""), flush=True)
    by_kernels = report.setdefault("train_by_kernels", {})
    under_target = lambda t: not smoke and (t["mfu_published_peak"] or 0) < TARGET_MFU  # noqa: E731
    want = {"always": lambda t: True, "never": None, "auto": under_target}[args.profile]
    for i, kernels in enumerate(args.kernels):
        config = bench_config(smoke, args.batch, kernels)
        mc = config.model
        if i == 0:
            print(f"  model: {mc.n_layer} layers, width {mc.d_model}, context {mc.max_len}, batch "
                  f"{config.train.batch_size}, compute {mc.dtype}, params {mc.param_dtype}", flush=True)
        t = measure_train(config, steps, warmup, (measured_peak, kind_peak), profile=want if i == 0 else None)
        if i == 0:
            t["peak_memory_mb"] = bench.peak_memory_mb()
            report["train"] = t
        by_kernels[kernels] = t
        print(describe(f"kernels={kernels}", t, kind_peak), flush=True)
        if "profile" in t:
            pr = t["profile"]
            print(f"    profile of 3 steps: {pr['device_ms']:.1f} ms of device ops in {pr['wall_ms']:.1f} ms, "
                  f"{pr['events']} ops; top ten:", flush=True)
            print_ops(pr["top"])
        save()
    train = report["train"]
    decode = report.setdefault("decode", {})
    bandwidth = published_bandwidth(report["device"]["device_kind"])
    config = bench_config(smoke, args.batch, args.kernels[0])
    for b in ((1, 4) if smoke else (1, 64)):
        run, n = bench.decode_runner(config, batch=b, new_tokens=32 if smoke else 128)
        t0 = time.perf_counter()
        run()
        decode[f"batch_{b}_tokens_per_s"] = b * n / (time.perf_counter() - t0)
        print(f"  decode batch {b}: {decode[f'batch_{b}_tokens_per_s']:,.0f} tok/s", flush=True)
        if b == 1 and (args.profile == "always" or (args.profile == "auto" and not smoke)):
            pr = decode["batch_1_profile"] = {"new_tokens": n, **bench.top_device_ops(run)}
            print(f"    profile: {pr['device_ms']:.1f} ms of device ops in {pr['wall_ms']:.1f} ms, "
                  f"{pr['events'] / n:.0f} ops per token; top five:", flush=True)
            print_ops(pr["top"], 5)
        save()
    if bandwidth:
        # Batch-1 decode reads every weight once per token: bytes as stored (param_dtype).
        bound = bandwidth / train["param_bytes"]
        decode.update(published_bandwidth_bytes_per_s=bandwidth, weight_bytes=train["param_bytes"],
                      batch_1_bandwidth_bound_tokens_per_s=bound,
                      batch_1_fraction_of_bound=decode["batch_1_tokens_per_s"] / bound)
        print(f"  decode batch 1 bound (weights {train['param_bytes'] / 2**20:,.0f} MB / "
              f"{bandwidth / 1e12:.2f} TB/s): {bound:,.0f} tok/s; measured {decode['batch_1_fraction_of_bound']:.1%} "
              "of it", flush=True)
        save()


def measure_variants(args, report: dict, save) -> None:
    """Extra configurations (``--variant NAME=key=value,key=value``), MFU counted against the
    base model's FLOPs so that, e.g., a padded vocabulary is not credited for its extra work."""
    kind_peak = published_peak(report["device"]["device_kind"])
    base = report["train"]
    out = report.setdefault("variants", {})
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        config = bench_config(args.smoke, args.batch, args.kernels[0], [o for o in overrides.split(",") if o])
        try:
            t = measure_train(config, *step_counts(args), (report["measured_bf16_peak_flops"], kind_peak),
                              flops_per_step=base["model_flops_per_step"])
        except Exception as e:  # one variant failing must not lose the report
            out[name] = {"overrides": overrides, "error": f"{type(e).__name__}: {str(e)[:500]}"}
            print(f"  variant {name}: {out[name]['error']}", flush=True)
            save()
            continue
        t["overrides"] = overrides
        out[name] = t
        print(describe(f"variant {name} ({overrides})", out[name], kind_peak), flush=True)
        save()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a small config and one test per group (CPU, CI)")
    ap.add_argument("--json", help="write the report here (rewritten after every measurement)")
    ap.add_argument("--batch", type=int, help="train batch (default 16; 8 with --smoke)")
    ap.add_argument("--steps", type=int, help="timed train steps (default 20; 3 with --smoke)")
    ap.add_argument("--kernels", nargs="+", default=["auto", "textbook"],
                    help="kernel sets to time, the first is the report's 'train' (default: auto textbook)")
    ap.add_argument("--set", action="append", default=[], metavar="K=V", dest="settings",
                    help="override applied to every measured config (repeatable)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=K=V[,K=V]",
                    help="also time the first kernel set with these overrides (repeatable)")
    ap.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                    help="top ten device ops of the train step (auto: when MFU is under target)")
    ap.add_argument("--workers", type=int, help="pytest workers for the tests (default: 0 with --smoke, "
                    "else min(8, cores / 2))")
    ap.add_argument("--tests-timeout", type=float, help="stop the tests after this many seconds")
    ap.add_argument("--tests-last", action="store_true", help="measure first, then run the tests")
    ap.add_argument("--skip-tests", action="store_true", help="measure only")
    args = ap.parse_args(argv)
    # This process shares the accelerator with the test subprocesses: take memory as needed.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    SETTINGS[:] = args.settings
    t0 = time.perf_counter()
    info = device_info()
    print(f"device: {info['device_count']} x {info['device_kind']} ({info['platform']}), jax {info['jax']}, "
          f"flax {info['flax']}, {info['process_count']} process(es)", flush=True)
    if info["platform"] == "cpu" and not args.smoke:
        print("  (no accelerator: the full GPT-2 small measurement is slow on a CPU; --smoke is the CPU check)")
    report = {"device": info, "smoke": args.smoke, "command": " ".join(["python benchmarks/accelerator_check.py",
                                                                         *(argv if argv is not None else sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d"), "settings": args.settings}

    def save():
        report["seconds"] = round(time.perf_counter() - t0, 1)
        if args.json:
            path = pathlib.Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(report, indent=2, default=float) + "\n")
            os.replace(tmp, path)

    def tests():
        if args.skip_tests:
            report["tests"] = {"skipped": "--skip-tests"}
            return
        print("tests:", flush=True)
        workers = args.workers if args.workers is not None else (0 if args.smoke else min(8, (os.cpu_count() or 2) // 2))
        report["tests"] = run_tests(args.smoke, workers, args.tests_timeout)
        save()

    if not args.tests_last:
        tests()
    print("measurements:", flush=True)
    measure(args, report, save)
    if args.tests_last:
        tests()
    if args.variant:
        print("variants:", flush=True)
        measure_variants(args, report, save)
    mfu = report["train"]["mfu_published_peak"]
    report["target_mfu"] = TARGET_MFU
    report["target_met"] = None if (mfu is None or args.smoke) else bool(mfu >= TARGET_MFU)
    save()
    groups = report["tests"].get("groups", {})
    failed = [g for g, c in groups.items() if c["failed"] or not c["passed"]]
    print(f"done in {report['seconds']:.0f} s; tests: "
          f"{'FAILED: ' + ', '.join(failed) if failed else 'ok' if groups else 'not run'}; "
          f"target MFU {TARGET_MFU:.0%}: "
          f"{'n/a' if report['target_met'] is None else ('met' if report['target_met'] else 'not met')}")
    if args.json:
        print(f"report: {args.json}")
    return report


if __name__ == "__main__":
    report = main()
    sys.exit(1 if report["tests"].get("returncode") else 0)
