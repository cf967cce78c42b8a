"""``jaxformer score``: the log-probability of every token of a text under a trained model."""
import argparse

HELP = "print per-token log-probabilities, the total and the perplexity of a text under a run's model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by `jaxformer train`")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to score (at least two tokens, counting the BOS a converted "
                     "model puts first, which is not scored itself; longer than the model's "
                     "context, it is scored in overlapping windows, see --stride)")
    src.add_argument("--file", metavar="PATH", help="score the text of this UTF-8 file instead of --text")
    p.add_argument("--stride", type=int, default=None, metavar="N",
                   help="past the context: windows of max_len tokens every N tokens (default "
                        "max_len/2; each token then sees at least max_len-N+1 tokens; 1 = the last "
                        "max_len tokens for every token, slowest)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def read_text_file(path: str) -> str:
    """The UTF-8 text of ``path``; DataError naming the path when it is missing or unreadable."""
    from jaxformer.errors import DataError

    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        raise DataError(f"--file={path!r} does not exist") from None
    except UnicodeDecodeError as e:
        raise DataError(f"--file={path!r} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    except OSError as e:
        raise DataError(f"--file={path!r} cannot be read: {e.strerror or e}") from None


def run(args) -> int:
    from jaxformer.runfolder import check_run_folder

    check_run_folder(args.run)   # a wrong folder answers before JAX starts
    import json
    import math

    from jaxformer.training.checkpoint import load_run
    from jaxformer.infer.scoring import score

    text = args.text if args.file is None else read_text_file(args.file)
    r = load_run(args.run, args.step)
    ids = r.tokenizer.encode(text)
    logp = [float(x) for x in score(r.model, ids, stride=args.stride)]
    total = sum(logp)
    nll = -total / len(logp)
    pieces = [r.tokenizer.decode([i]) for i in ids]
    if args.json:
        print(json.dumps({"run": str(r.path), "step": r.step, "text": text, "token_ids": ids,
                          "tokens": pieces, "logprobs": logp, "total_logprob": total,
                          "mean_nll": nll, "perplexity": math.exp(nll)}, ensure_ascii=False))
        return 0
    print(f"{'pos':>5}  {'id':>6}  {'token':<16} {'logprob':>9}")
    print(f"{0:>5}  {ids[0]:>6}  {pieces[0]!r:<16} {'(first)':>9}")
    for t, (i, lp) in enumerate(zip(ids[1:], logp), start=1):
        print(f"{t:>5}  {i:>6}  {pieces[t]!r:<16} {lp:>9.4f}")
    print(f"total log-prob {total:.4f} over {len(logp)} predicted tokens; mean NLL {nll:.4f} nats; "
          f"perplexity {math.exp(nll):.3f}")
    return 0
