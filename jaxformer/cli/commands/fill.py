"""``jaxformer fill``: an encoder's top candidates for each ``[MASK]`` of a text."""
import argparse

HELP = "print an encoder run's most likely tokens, with probabilities, at each [MASK] of a text"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="DIR",
                   help="run folder of an encoder (model.causal=false) written by `jaxformer train`")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--text", required=True,
                   help='the text, with [MASK] where a token is to be filled, e.g. "to be or not to [MASK]e"')
    p.add_argument("--top", type=int, default=5, metavar="N", help="candidates per mask (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    import json

    from jaxformer.infer.fill import fill_masks
    from jaxformer.training.checkpoint import load_run

    r = load_run(args.run, args.step)
    filled = fill_masks(r.model, r.tokenizer, args.text, top=args.top)
    if args.json:
        print(json.dumps({"run": str(r.path), "step": r.step, "text": args.text, "masks": filled},
                         ensure_ascii=False))
        return 0
    for k, m in enumerate(filled):
        print(f"[MASK] {k + 1} (token {m['position']}):")
        for _, piece, p in m["candidates"]:
            print(f"  {piece!r:<16} {p:.4f}")
    return 0
