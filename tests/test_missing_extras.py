"""Without the hf extra (torch / transformers not importable), the commands that need it say
which extra to install in one line and exit 2, never with a traceback; a model name that is
not in the local Hugging Face cache says how to put it there."""
import json
import subprocess
import sys

# Run in a fresh interpreter where importing torch and transformers fails as if they were
# not installed (a None entry in sys.modules makes ``import torch`` raise ImportError).
BLOCK = "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"


def run_blocked(code: str, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def assert_one_line_hint(proc, extra="hf"):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert f'pip install -e ".[{extra}]"' in lines[0], lines[0]


def test_compare_without_hf_extra_names_the_extra(tmp_path):
    for args in (["--random-124m"], [str(tmp_path)]):
        proc = run_blocked("from jaxformer.interop.compare import main\n"
                           f"sys.exit(main({args!r}))", tmp_path)
        assert_one_line_hint(proc)


def test_convert_of_a_pytorch_bin_without_torch_names_the_extra(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 64, "n_embd": 16,
        "n_head": 2, "n_layer": 1, "n_positions": 32}))
    (folder / "pytorch_model.bin").write_bytes(b"not read without torch")
    proc = run_blocked("from jaxformer.cli import main\n"
                       f"sys.exit(main(['convert', '--from-hf', {str(folder)!r}, '--out', 'run']))", tmp_path)
    assert_one_line_hint(proc)


def test_convert_of_a_name_not_in_the_cache_says_how_to_get_it(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items()}
    env.update(HF_HUB_CACHE=str(tmp_path / "empty-cache"), HF_HOME=str(tmp_path / "empty-home"))
    proc = run_blocked("from jaxformer.cli import main\n"
                       "sys.exit(main(['convert', '--from-hf', 'gpt2', '--out', 'run']))", tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "huggingface-cli download gpt2" in proc.stderr
