"""The README is the front door: its Python examples run as written, and its shell examples
use only run folders that an earlier README command creates."""
import re

import pytest

from jaxformer_testing.docs import README, fenced_blocks, run_python_blocks, shell_problems


@pytest.mark.slow   # a fresh interpreter trains, samples and draws: ~30 s on 2 cores
def test_readme_python_blocks_run_top_to_bottom(tmp_path):
    """Every ```python block, in order, in one fresh interpreter with nothing done first
    (in an empty folder, so the files the examples write land there, not in the checkout)."""
    assert len(fenced_blocks(README, "python")) >= 2
    proc = run_python_blocks(README, tmp_path)
    assert proc.returncode == 0, f"README python blocks failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def test_readme_shell_examples_use_run_folders_made_earlier():
    """A ``--run DIR`` / ``--from-run DIR`` in a ```bash block names a folder that an
    earlier README command wrote with ``--out DIR``; ``--data`` / ``--file`` / ``--config``
    paths exist in a fresh clone (glob patterns match something there), are built-in names,
    or (``--data``) a folder an earlier command wrote (``jaxformer prepare --out``)."""
    made = set()
    problems = shell_problems(README, made)
    assert not problems, "\n".join(problems)
    assert made, "no README command writes a run folder"


def test_readme_is_short():
    """The front door stays a five-minute read; the rest is in docs/."""
    assert len(README.read_bytes()) <= 25_000


def test_ci_runs_the_readme_test_command():
    """.ci/run installs and tests exactly as the README's test command says (CI may only add
    --durations), with the pinned constraints."""
    (block,) = [code for _, code in fenced_blocks(README, "bash") if "pytest" in code and "venv" in code]
    readme_cmd = block.strip().split(". .venv/bin/activate && ", 1)[1]
    assert "-c constraints-test.txt" in readme_cmd
    ci = (README.parent / ".ci" / "run").read_text()
    ci_cmd = next(ln for ln in ci.splitlines() if "pytest" in ln and not ln.startswith("#"))
    assert re.sub(r" --durations=\d+", "", ci_cmd).strip() == readme_cmd
    assert (README.parent / "constraints-test.txt").is_file()
