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

REPORT_KEYS = ("device", "tests", "train", "decode", "target_mfu", "target_met", "smoke", "seconds")


def published_peak(device_kind: str):
    for key, peak in PUBLISHED_BF16_PEAK:
        if key.lower() in device_kind.lower():
            return peak
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


def run_tests(smoke: bool) -> dict:
    """The subset in one pytest subprocess: ``{group: {passed, failed, skipped}}`` plus the
    run's ``seconds`` and ``returncode``."""
    if not (ROOT / "tests").is_dir():
        return {"skipped": f"no tests/ folder beside {ROOT / 'benchmarks'} (run from a clone)"}
    selection = [sel for full, small in TESTS.values() for sel in (small if smoke else full)]
    with tempfile.TemporaryDirectory() as tmp:
        xml = pathlib.Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
               *dict.fromkeys(selection)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
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
    if proc.returncode != 0:
        print("\n".join(proc.stdout.splitlines()[-15:]), flush=True)
    print(f"  ({seconds:.0f} s, pytest exit code {proc.returncode})", flush=True)
    return {"groups": out, "seconds": round(seconds, 1), "returncode": proc.returncode}


def bench_config(smoke: bool, batch, steps: int):
    from jaxformer import load_config

    if smoke:
        return load_config("toy", ["model.max_len=64", f"train.batch_size={batch or 8}",
                                   "model.dtype=bfloat16", "model.kernels=auto"])
    return load_config("gpt2_small", [f"train.batch_size={batch or 16}", "model.dtype=bfloat16",
                                      "model.kernels=auto"])


def measure(config, smoke: bool, steps: int) -> tuple[dict, dict]:
    from jaxformer import bench

    mc = config.model
    print(f"  model: {mc.n_layer} layers, width {mc.d_model}, context {mc.max_len}, batch "
          f"{config.train.batch_size}, compute {mc.dtype}, params {mc.param_dtype}", flush=True)
    train = bench.bench_train_step(config, steps=steps, warmup=2 if not smoke else 1)
    measured_peak = bench.measure_peak_flops("bfloat16", n=512 if smoke else None, iters=3 if smoke else 10)
    achieved = train["model_flops_per_step"] / (train["step_ms"] / 1e3)
    kind_peak = published_peak(device_info()["device_kind"])
    train.update(measured_bf16_peak_flops=measured_peak, achieved_flops=achieved,
                 mfu_measured_peak=achieved / measured_peak,
                 mfu_published_peak=achieved / kind_peak if kind_peak else None,
                 peak_memory_mb=bench.peak_memory_mb(), batch=config.train.batch_size, seq=mc.max_len,
                 dtype=mc.dtype, param_dtype=mc.param_dtype,
                 parameters=bench.matmul_params(mc))
    print(f"  train step: compile {train['compile_s']:.1f} s, {train['step_ms']:.1f} ms/step, "
          f"{train['tokens_per_s']:,.0f} tok/s, kernels {train['kernels']}, MFU "
          f"{train['mfu_measured_peak']:.1%} of the measured bf16 peak ({measured_peak / 1e12:.1f} TFLOP/s)"
          + (f", {train['mfu_published_peak']:.1%} of the published {kind_peak / 1e12:.0f} TFLOP/s"
             if kind_peak else ", no published peak for this device") +
          f"; peak memory {train['peak_memory_mb']:,.0f} MB", flush=True)
    decode = {}
    for b in ((1, 4) if smoke else (1, 64)):
        decode[f"batch_{b}_tokens_per_s"] = bench.bench_decode(config, batch=b, new_tokens=32 if smoke else 128)
        print(f"  decode batch {b}: {decode[f'batch_{b}_tokens_per_s']:,.0f} tok/s", flush=True)
    return train, decode


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a small config and one test per group (CPU, CI)")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--batch", type=int, help="train batch (default 16; 8 with --smoke)")
    ap.add_argument("--steps", type=int, help="timed train steps (default 20; 3 with --smoke)")
    ap.add_argument("--skip-tests", action="store_true", help="measure only")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    info = device_info()
    print(f"device: {info['device_count']} x {info['device_kind']} ({info['platform']}), jax {info['jax']}, "
          f"flax {info['flax']}, {info['process_count']} process(es)", flush=True)
    if info["platform"] == "cpu" and not args.smoke:
        print("  (no accelerator: the full GPT-2 small measurement is slow on a CPU; --smoke is the CPU check)")
    report = {"device": info, "smoke": args.smoke}
    if args.skip_tests:
        report["tests"] = {"skipped": "--skip-tests"}
    else:
        print("tests:", flush=True)
        report["tests"] = run_tests(args.smoke)
    print("measurements:", flush=True)
    config = bench_config(args.smoke, args.batch, args.steps)
    report["train"], report["decode"] = measure(config, args.smoke, args.steps or (3 if args.smoke else 20))
    mfu = report["train"]["mfu_published_peak"]
    report["target_mfu"] = TARGET_MFU
    report["target_met"] = None if (mfu is None or args.smoke) else bool(mfu >= TARGET_MFU)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    groups = report["tests"].get("groups", {})
    failed = [g for g, c in groups.items() if c["failed"] or not c["passed"]]
    print(f"done in {report['seconds']:.0f} s; tests: "
          f"{'FAILED: ' + ', '.join(failed) if failed else 'ok' if groups else 'not run'}; "
          f"target MFU {TARGET_MFU:.0%}: "
          f"{'n/a' if report['target_met'] is None else ('met' if report['target_met'] else 'not met')}")
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(report, indent=2, default=float) + "\n")
        os.replace(tmp, path)
        print(f"report: {path}")
    return report


if __name__ == "__main__":
    report = main()
    sys.exit(1 if report["tests"].get("returncode") else 0)
