"""benchmarks/accelerator_check.py: the command for a GPU/TPU day runs here on the CPU with
--smoke, through the same code, and writes every key of its report."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_script():
    """benchmarks/accelerator_check.py imported by its file path (the benchmarks folder never
    goes on sys.path, where its modules could shadow installed ones)."""
    spec = importlib.util.spec_from_file_location("jaxformer_benchmarks_accelerator_check",
                                                  ROOT / "benchmarks" / "accelerator_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_published_peaks_by_device_kind():
    published_peak = load_script().published_peak

    assert published_peak("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert published_peak("NVIDIA H100 PCIe") == pytest.approx(756e12)        # the more specific entry wins
    assert published_peak("NVIDIA H200") == pytest.approx(989.4e12)
    assert published_peak("NVIDIA A100-SXM4-80GB") == pytest.approx(312e12)
    assert published_peak("TPU v5 lite") == pytest.approx(197e12)
    assert published_peak("cpu") is None


@pytest.mark.slow
def test_smoke_run_writes_the_report(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accelerator_check.py"), "--smoke",
                           "--kernels", "auto", "--json", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    script = load_script()
    REPORT_KEYS, TESTS = script.REPORT_KEYS, script.TESTS

    assert set(REPORT_KEYS) <= set(report)
    assert report["smoke"] is True and report["device"]["platform"] == "cpu"
    groups = report["tests"]["groups"]
    assert set(groups) == set(TESTS) and all(g["passed"] >= 1 and g["failed"] == 0 for g in groups.values())
    train = report["train"]
    for key in ("compile_s", "step_ms", "tokens_per_s", "mfu_measured_peak", "mfu_published_peak",
                "measured_bf16_peak_flops", "peak_memory_mb", "kernels"):
        assert key in train, key
    assert train["dtype"] == "bfloat16" and train["param_dtype"] == "float32"
    assert 0 < train["mfu_measured_peak"] < 2 and train["mfu_published_peak"] is None
    assert set(report["decode"]) == {"batch_1_tokens_per_s", "batch_4_tokens_per_s"}
    assert all(v > 0 for v in report["decode"].values())
    assert report["target_met"] is None and "tests: ok" in proc.stdout
