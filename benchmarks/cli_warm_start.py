"""Wall time of `jaxformer` commands with a cold and a warm persistent compilation cache.

    python benchmarks/cli_warm_start.py [--rounds 3] [--json FILE]

Trains the toy config for a few steps into a temporary folder, then times, each in a fresh
process: `jaxformer sample`, `score`, `attention` on that run and `jaxformer train --config toy
--set train.max_steps=20`. Cold: a fresh, empty cache folder. Warm: the folder the cold run of
the same command just filled. Rounds alternate cold and warm; the table gives the best of the
rounds (the median is in the JSON), and `python -c "from jaxformer import GPT"` (Python, JAX,
Flax and the model stack: what every command imports; `import jaxformer` alone is lazy and
imports nothing) as the floor a command cannot beat. Targets: warm <= 0.6x cold for every
command, warm `sample` <= 1.5x the import.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: The floor: what every command imports before it does anything (JAX, Flax, the model stack).
IMPORT = "from jaxformer import GPT"
TEXT = "The quick brown fox jumps over the lazy dog, and the dog does not mind."


def commands(run: Path, scratch: Path) -> dict:
    """name -> argv after `python -m jaxformer` (train gets a fresh --out per call)."""
    return {
        "sample": ["sample", "--run", str(run), "--prompt", "The ", "--max-new-tokens", "100", "--json"],
        "score": ["score", "--run", str(run), "--text", TEXT, "--json"],
        "attention": ["attention", "--run", str(run), "--text", TEXT[:40], "--out", str(scratch / "attention.png")],
        "train": ["train", "--config", "toy", "--set", "train.max_steps=20", "--no-progress", "--out", None],
    }


def environment(cache) -> dict:
    """This process's environment with only our cache setting (JAX's own ones removed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    env["JAXFORMER_CACHE_DIR"] = str(cache)
    return env


def timed(argv, cache) -> float:
    """Seconds of wall time of ``python argv`` (a failure stops the benchmark)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, *argv], env=environment(cache), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stderr}")
    return seconds


def cli(argv, scratch: Path, tag: str) -> list:
    return ["-m", "jaxformer", *[str(scratch / f"train-{tag}") if a is None else a for a in argv]]


def measure(rounds: int, scratch: Path) -> dict:
    """{name: {"cold": [s, ...], "warm": [s, ...]}} plus {"import": {"cold": [...]}}."""
    run = scratch / "run"
    timed(cli(["train", "--config", "toy", "--set", "train.max_steps=20", "--no-progress", "--out", str(run)],
              scratch, "setup"), "off")
    times = {name: {"cold": [], "warm": []} for name in commands(run, scratch)}
    times["import"] = {"cold": []}
    for r in range(rounds):
        for name, argv in commands(run, scratch).items():
            cache = scratch / f"cache-{name}-{r}"          # fresh and empty: a cold start
            times[name]["cold"].append(timed(cli(argv, scratch, f"{r}-cold"), cache))
            times[name]["warm"].append(timed(cli(argv, scratch, f"{r}-warm"), cache))
            print(f"round {r + 1}/{rounds} {name:9s} cold {times[name]['cold'][-1]:5.2f} s  "
                  f"warm {times[name]['warm'][-1]:5.2f} s", flush=True)
        times["import"]["cold"].append(timed(["-c", IMPORT], "off"))
    return times


def table(times: dict) -> str:
    imp = min(times["import"]["cold"])
    lines = [f"{'command':<10} {'cold s':>7} {'warm s':>7} {'warm/cold':>10} {'warm/import':>12}"]
    for name, t in times.items():
        if name == "import":
            continue
        cold, warm = min(t["cold"]), min(t["warm"])
        lines.append(f"{name:<10} {cold:7.2f} {warm:7.2f} {warm / cold:10.2f} {warm / imp:12.2f}")
    lines.append(f"{'import':<10} {imp:7.2f} {'':>7} {'':>10} {1.0:12.2f}   (python -c \"{IMPORT}\")")
    return "\n".join(lines)


def summary(times: dict) -> dict:
    imp = min(times["import"]["cold"])
    out = {"rounds": times, "import_best_s": imp, "commands": {}}
    for name, t in times.items():
        if name != "import":
            cold, warm = min(t["cold"]), min(t["warm"])
            out["commands"][name] = {"cold_best_s": cold, "warm_best_s": warm, "warm_over_cold": warm / cold,
                                     "cold_median_s": statistics.median(t["cold"]),
                                     "warm_median_s": statistics.median(t["warm"]), "warm_over_import": warm / imp}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="cold/warm rounds (default 3); the best is reported")
    ap.add_argument("--json", metavar="FILE", help="also write the times and the machine here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="jaxformer-warm-") as tmp:
        times = measure(args.rounds, Path(tmp))
    print(table(times))
    if args.json:
        import jax

        result = summary(times)
        result.update(date=time.strftime("%Y-%m-%d"), python=platform.python_version(), jax=jax.__version__,
                      cpu_count=os.cpu_count(), machine=platform.machine(), rounds_run=args.rounds)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
