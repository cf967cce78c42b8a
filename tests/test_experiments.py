"""Smoke tests: every experiment script runs to the end with tiny sizes (`--small`) and writes
its figures and summary. The scripts that train a model are marked slow."""
import importlib.util
import pathlib
import sys

import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))


def load(name):
    spec = importlib.util.spec_from_file_location(f"exp_{name}", EXPERIMENTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(name, tmp_path, *extra):
    out = tmp_path / name
    result = load(name).main(["--small", "--out", str(out), *extra])
    pngs = sorted(out.glob("*.png"))
    assert pngs and all(p.stat().st_size > 2000 for p in pngs)
    assert (out / "summary.txt").read_text().strip()
    return result, out


def test_01_attention_by_hand(tmp_path):
    result, out = run("01_attention_by_hand", tmp_path)
    assert result["max_diff"] < 1e-6
    assert "4. weights" in (out / "summary.txt").read_text()


def test_02_positional_encoding(tmp_path):
    result, _ = run("02_positional_encoding", tmp_path)
    assert result["relative_spread"] < 1e-4


@pytest.mark.slow
def test_07_compare_with_references(tmp_path):
    result, _ = run("07_compare_with_references", tmp_path)
    assert any(k.startswith("flax") for k in result) and max(result.values()) < 1e-4


@pytest.mark.slow
def test_03_block_and_stack(tmp_path):
    result, _ = run("03_block_and_stack", tmp_path)
    assert all(abs(v - result["mean_norms"]["post"][1]) < 1e-3 for v in result["mean_norms"]["post"][1:])


@pytest.mark.slow
def test_04_train_tiny_gpt(tmp_path):
    result, out = run("04_train_tiny_gpt", tmp_path, "--steps", "20")
    assert result["val_loss"] < 5.6 and (out / "run" / "metrics.jsonl").is_file()


@pytest.mark.slow
def test_05_sampling_and_logprobs(tmp_path):
    result, _ = run("05_sampling_and_logprobs", tmp_path)
    e = result["entropies"]
    assert e["greedy (T=0)"] < 1e-9 < e["T=0.5"] < e["T=1.0"] < e["T=1.5"]


@pytest.mark.slow
def test_06_multihead_patterns(tmp_path):
    result, out = run("06_multihead_patterns", tmp_path)
    assert len(result["descriptions"]) == 2 and (out / "sentence2_explorer.html").is_file()
