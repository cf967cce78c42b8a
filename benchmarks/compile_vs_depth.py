"""Train-step compile time against depth, with layers scanned (default) and unrolled.

    python benchmarks/compile_vs_depth.py [--layers 2 6 12 24] [--json]

Scanned layers compile one block body whatever the depth, so compile time should stay flat;
unrolled layers compile L copies.
"""
import argparse
import json
import time

import jax

from jaxformer import load_config
from jaxformer.training import steps as training


def compile_seconds(overrides):
    cfg = load_config(None, overrides)
    params = training.init_params(cfg)
    opt = training.make_optimizer(cfg.train, params)
    state = opt.init(params)
    step = training.make_train_step(cfg, opt)
    batch = jax.ShapeDtypeStruct((cfg.train.grad_accum, cfg.train.batch_size, cfg.model.max_len + 1), "int32")
    t0 = time.perf_counter()
    step.lower(params, state, batch, jax.ShapeDtypeStruct((), "int32")).compile()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 6, 12, 24])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base = ["model.d_model=256", "model.n_head=4", "model.max_len=128", "model.vocab_size=512",
            "train.batch_size=8"]
    rows = []
    for L in args.layers:
        row = {"n_layer": L}
        for scan in (True, False):
            row["scan" if scan else "unrolled"] = compile_seconds(
                base + [f"model.n_layer={L}", f"model.scan_layers={str(scan).lower()}"])
        rows.append(row)
        if not args.json:
            print(f"L={L:3d}  scanned {row['scan']:6.2f} s   unrolled {row['unrolled']:6.2f} s", flush=True)
    ratio = rows[-1]["scan"] / rows[0]["scan"]
    if args.json:
        print(json.dumps({"rows": rows, "scan_ratio_last_over_first": ratio}))
    else:
        print(f"scanned compile time, {args.layers[-1]} layers / {args.layers[0]} layers: {ratio:.2f}x")


if __name__ == "__main__":
    main()
