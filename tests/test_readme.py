"""The README is the front door: its Python examples run as written, and its shell examples
use only run folders that an earlier README command creates."""
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def fenced_blocks(language: str) -> list:
    """``(line number, code)`` of every fenced block of ``language`` in README.md."""
    text = README.read_text(encoding="utf-8")
    return [(text[:m.start()].count("\n") + 2, m.group(1))
            for m in re.finditer(rf"^```{language}\n(.*?)^```", text, re.S | re.M)]


@pytest.mark.slow
def test_readme_python_blocks_run_top_to_bottom(tmp_path):
    """Every ```python block, in order, in one fresh interpreter with nothing done first
    (in an empty folder, so the files the examples write land there, not in the checkout)."""
    blocks = fenced_blocks("python")
    assert len(blocks) >= 4
    script = "\n".join(f"# --- README.md line {line}\n{code}" for line, code in blocks)
    (tmp_path / "readme_blocks.py").write_text(script, encoding="utf-8")
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="error::DeprecationWarning:jaxformer")
    proc = subprocess.run([sys.executable, "readme_blocks.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"README python blocks failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def test_readme_shell_examples_use_run_folders_made_earlier():
    """A ``--run DIR`` / ``--from-run DIR`` in a ```bash block names a folder that an
    earlier README command wrote with ``--out DIR``; ``--data`` / ``--file`` / ``--config``
    paths exist in a fresh clone (glob patterns match something there), are built-in names,
    or (``--data``) a folder an earlier command wrote (``jaxformer prepare --out``)."""
    made, problems = set(), []
    for line, code in fenced_blocks("bash"):
        for cmd in code.splitlines():
            cmd = cmd.split("#", 1)[0].strip()
            if not cmd.startswith("jaxformer"):
                continue
            words = shlex.split(cmd)
            flags = dict(zip(words, words[1:]))
            for flag in ("--run", "--from-run"):
                if flag in flags and flags[flag].rstrip("/") not in made:
                    problems.append(f"line {line}: {flag} {flags[flag]} is not created by an earlier command")
            for flag in ("--data", "--file", "--config"):
                value = flags.get(flag)
                exists = any(README.parent.glob(value)) if value and "*" in value else \
                    bool(value) and (README.parent / value).exists()
                earlier = flag == "--data" and bool(value) and value.rstrip("/") in made
                if value and value not in ("pydoc", "shakespeare") and "/" in value and not earlier \
                        and (value.startswith("..") or not exists):
                    problems.append(f"line {line}: {flag} {value} does not exist in a fresh clone")
            if "--out" in flags:
                made.add(flags["--out"].rstrip("/"))
    assert not problems, "\n".join(problems)
    assert made, "no README command writes a run folder"


def test_ci_runs_the_readme_test_command():
    """.ci/run installs and tests exactly as the README's test command says (CI may only add
    --durations), with the pinned constraints."""
    (block,) = [code for _, code in fenced_blocks("bash") if "pytest" in code and "venv" in code]
    readme_cmd = block.strip().split(". .venv/bin/activate && ", 1)[1]
    assert "-c constraints-test.txt" in readme_cmd
    ci = (README.parent / ".ci" / "run").read_text()
    ci_cmd = next(ln for ln in ci.splitlines() if "pytest" in ln and not ln.startswith("#"))
    assert re.sub(r" --durations=\d+", "", ci_cmd).strip() == readme_cmd
    assert (README.parent / "constraints-test.txt").is_file()
