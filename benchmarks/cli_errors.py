"""Wall time of every bad-input case of the CLI tests (``tests/test_bad_inputs.py::CLI_BAD_INPUTS``),
each in a fresh ``python -m jaxformer`` process: exit status, seconds, the message; then the slowest.

    python benchmarks/cli_errors.py
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_bad_inputs import CLI_BAD_INPUTS  # noqa: E402  (the list the tests check)


def time_case(argv: list[str], out: pathlib.Path) -> tuple[float, int, str]:
    if argv[0] == "train":
        argv = argv + ["--out", str(out), "--no-progress"]
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "jaxformer", *argv], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return time.perf_counter() - start, r.returncode, (r.stderr.strip().splitlines() or [""])[-1]


def main() -> None:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (argv, _) in enumerate(CLI_BAD_INPUTS):
            seconds, code, message = time_case(list(argv), pathlib.Path(tmp) / f"out{i}")
            times.append((seconds, " ".join(argv)))
            print(f"{seconds:6.2f} s  exit {code}  jaxformer {' '.join(argv)}\n          {message}", flush=True)
    slowest = max(times)
    print(f"slowest: {slowest[0]:.2f} s (jaxformer {slowest[1]}); {len(times)} cases")


if __name__ == "__main__":
    main()
