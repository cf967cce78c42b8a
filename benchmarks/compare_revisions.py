"""Train-step time of two (or more) git revisions of jaxformer, side by side.

Each revision is checked out into a temporary ``git worktree`` and timed in its own
process run from that checkout (so ``import jaxformer`` is that revision's), and the processes take turns:
round 1 of every revision, then round 2, ... The best round of each is reported with the
ratio to the first revision, so drift on a shared machine hits every revision alike.

    python benchmarks/compare_revisions.py 15f5ae1 HEAD [--config configs/default.yaml]
        [--set key=value ...] [--rounds 3] [--steps 5]

The config file is read from the current checkout, so every revision runs the same model.
Each line also names the compiled train step (a hash of its optimized HLO without source
locations): equal hashes mean the revisions run the same program.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]

CHILD = r"""
import hashlib, json, re, sys, time
import numpy as np
import jax, jax.numpy as jnp
import jaxformer
from jaxformer import load_config
try:  # the training steps' module: jaxformer.training.steps, or the flat jaxformer/training.py of older revisions
    from jaxformer.training import steps as training
except ImportError:
    from jaxformer import training
cfg = load_config(sys.argv[1], json.loads(sys.argv[2]))
steps = int(sys.argv[3])
tc, mc = cfg.train, cfg.model
params = training.init_params(cfg)
opt = training.make_optimizer(tc, params)
state = opt.init(params)
b = np.random.default_rng(0).integers(0, mc.vocab_size, (tc.batch_size, mc.max_len + 1), dtype=np.int32)
b = jnp.asarray(training.micro_batches(b, tc.grad_accum))
step = training.make_train_step(cfg, opt).lower(params, state, b, jnp.int32(0)).compile()
hlo = re.sub(r"metadata=\{[^}]*\}", "", step.as_text())   # source locations differ between checkouts
for i in range(2):
    params, state, m = step(params, state, b, jnp.int32(i))
jax.block_until_ready(m["loss"])
t0 = time.perf_counter()
for i in range(steps):
    params, state, m = step(params, state, b, jnp.int32(i))
jax.block_until_ready(m["loss"])
print(json.dumps({"ms": (time.perf_counter() - t0) / steps * 1e3, "loss": float(m["loss"]),
                  "file": jaxformer.__file__, "hlo": hashlib.sha256(hlo.encode()).hexdigest()[:12],
                  "hlo_lines": hlo.count("\n")}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("revisions", nargs="+")
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    config = str((pathlib.Path.cwd() / args.config).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for rev in args.revisions:
            path = pathlib.Path(tmp) / f"rev{len(trees)}"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(path), rev],
                           check=True)
            trees[rev] = path
        try:
            best = {rev: float("inf") for rev in trees}
            for r in range(args.rounds):
                for rev, path in trees.items():
                    env = dict(os.environ, PYTHONPATH=str(path))
                    out = subprocess.run([sys.executable, "-c", CHILD, config, json.dumps(args.overrides),
                                          str(args.steps)], env=env, cwd=path, capture_output=True, text=True, check=True)
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    assert res["file"].startswith(str(path)), res["file"]
                    best[rev] = min(best[rev], res["ms"])
                    print(f"round {r + 1} {rev:>12s} {res['ms']:9.1f} ms/step  loss {res['loss']:.5f}  "
                          f"compiled step {res['hlo']} ({res['hlo_lines']} HLO lines)", flush=True)
        finally:
            for path in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)
    first = best[args.revisions[0]]
    print(f"\n{args.config} {' '.join(args.overrides)}: best of {args.rounds} rounds x {args.steps} steps")
    for rev, ms in best.items():
        print(f"  {rev:>12s} {ms:9.1f} ms/step   {first / ms:5.2f}x the speed of {args.revisions[0]}")


if __name__ == "__main__":
    main()
