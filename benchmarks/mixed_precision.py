"""Mixed precision: the same run (same initial weights, same batches) in float32 and in
bfloat16 compute (float32 master weights, float32 softmax / logits / loss), step by step.

    python benchmarks/mixed_precision.py [--config FILE] [--steps N] [--set key=value ...]
        [--out mixed_precision.png] [--json result.json]

Reports the largest gap between the two loss curves (raw, and smoothed over a 25-step
window, which is what one reads off a plot) and the gap of the last 50 steps' mean.
The tolerance in docs/training.md (mixed precision) comes from this script; tests/test_training.py checks a short
run of the toy model against a looser bound.
"""
import argparse
import json
import time

import numpy as np

from jaxformer import load_config
from jaxformer.training import steps as training
from jaxformer.data import encode_corpus, build_tokenizer, load_corpus


def smooth(x, w=25):
    return np.convolve(x, np.ones(w) / w, mode="valid")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/shakespeare_char_cpu.yaml")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default="mixed_precision.png")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    base = load_config(args.config, args.overrides)
    text = load_corpus(base.data.path)
    tok = build_tokenizer(base.data.tokenizer, text, base.data.vocab_size)
    ids = encode_corpus(text, tok).split("train")
    curves, times = {}, {}
    for dtype in ("float32", "bfloat16"):
        cfg = load_config(args.config, args.overrides + [f"train.dtype={dtype}",
                                                         f"model.vocab_size={tok.vocab_size}"])
        t0 = time.perf_counter()
        curves[dtype] = training.loss_curve(cfg, ids, args.steps)
        times[dtype] = time.perf_counter() - t0
        print(f"{dtype:9s} final loss {curves[dtype][-50:].mean():.4f}  ({times[dtype]:.0f} s)")
    a, b = curves["float32"], curves["bfloat16"]
    result = {"config": args.config, "steps": args.steps,
              "max_abs_gap": float(np.max(np.abs(a - b))),
              "max_abs_gap_smoothed": float(np.max(np.abs(smooth(a) - smooth(b)))),
              "last50_gap": float(b[-50:].mean() - a[-50:].mean()),
              "last50_float32": float(a[-50:].mean()), "seconds": times}
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**result, "curves": {k: v.tolist() for k, v in curves.items()}}, f)
    from jaxformer.viz.figure import save
    from jaxformer.viz.plots import line_plot
    xs = np.arange(24, args.steps)[::5]
    fig = line_plot({k: smooth(v)[::5] for k, v in curves.items()}, x=xs,
                    title=f"{args.config}: float32 vs bfloat16 compute",
                    xlabel="step", ylabel="train loss (25-step mean)")
    save(fig, args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
