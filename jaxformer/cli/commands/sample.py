"""``jaxformer sample``: generate text from a run folder, streamed to the terminal as it is produced."""
import argparse

HELP = "generate text from a trained run folder (KV-cache decoding, streamed as it is produced)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by `jaxformer train`")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--prompt", default="", help="text to continue (default: empty, i.e. start from "
                   "the tokenizer's start token: the BOS of a converted model that has one, else "
                   "end-of-text for BPE, a newline for char/byte; it is not printed). A converted "
                   "model's BOS is put before the prompt, as transformers does")
    p.add_argument("--max-new-tokens", type=int, default=200, metavar="N",
                   help="tokens to generate (default 200; past the model's context it sees the "
                   "last max_len tokens, as nanoGPT's crop does)")
    p.add_argument("--slide-every", type=int, default=1, metavar="N",
                   help="past the context, re-read the window every N tokens (default 1: exactly "
                   "the last max_len tokens for every token; larger is faster, each token then "
                   "sees between max_len-N+1 and max_len tokens)")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K most likely tokens")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling threshold in (0, 1]")
    p.add_argument("--repetition-penalty", type=float, default=None, metavar="R",
                   help="CTRL repetition penalty (> 1 discourages repeats)")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same text)")
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples of the same prompt, "
                   "generated as one batch")
    p.add_argument("--no-stop", action="store_true", help="do not stop at the end-of-text token(s) "
                   "(a converted model's: every eos id of its config)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.add_argument("--logprobs", action="store_true", help="with --json: the log-probability of each token")
    p.add_argument("--top-n", type=int, default=0, metavar="N",
                   help="with --json: also the N most likely alternatives at every step")
    p.add_argument("--chunk", type=int, default=8, metavar="N",
                   help="stream every N tokens (each chunk is one compiled decode loop)")


def unfinished_utf8(ids) -> int:
    """How many trailing ids of a byte-level sample begin a UTF-8 character the sample did not
    finish (a lead byte followed by fewer continuation bytes than it announces), else 0."""
    for back in range(1, min(4, len(ids)) + 1):
        b = int(ids[-back])
        if b < 0x80 or b > 0xF7:                  # ASCII, or not a byte that starts a character
            return 0
        if b >= 0xC0:                             # a lead byte: how long its character is
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return back if back < need else 0
    return 0


def finished_text(tok, text_of, seq) -> str:
    """The text of ``seq`` without a character the sample stopped in the middle of (byte-level
    tokenizers cut UTF-8 anywhere; the decoder would show U+FFFD for it)."""
    from jaxformer.data.tokenizers import ByteTokenizer

    cut = unfinished_utf8(seq) if isinstance(tok, ByteTokenizer) else 0
    return text_of(list(seq)[:len(seq) - cut])


def _prompt_ids(run, text: str) -> list:
    """The prompt's ids as the model reads them (a converted model's BOS first); an empty
    prompt starts from ``start_ids`` (the BOS when there is one)."""
    from jaxformer.data.tokenizers import start_ids

    ids = run.tokenizer.encode(text) if text else []
    return ids or start_ids(run.tokenizer)


def _text_of(tok, context: list, stop: tuple):
    """A function from generated ids to their text (stop tokens left out), decoded after
    ``context`` (the prompt's text ids) so that tokenizers whose decoder treats the first
    token specially (SentencePiece's leading space) give the continuation's own spaces."""
    head = tok.decode(context) if context else ""

    def text_of(seq) -> str:
        new = [t for t in seq if t not in stop]
        if not context:
            return tok.decode(new)
        full = tok.decode(context + new)
        return full[len(head):] if full.startswith(head) else tok.decode(new)
    return text_of


def _check_args(args) -> None:
    from jaxformer.errors import GenerationError
    from jaxformer.infer.sampling import check_sampling

    check_sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
                   top_n=args.top_n)
    if args.num_samples < 1:
        raise GenerationError(f"--num-samples={args.num_samples} must be >= 1")
    if args.chunk < 1:
        raise GenerationError(f"--chunk={args.chunk} must be >= 1")


def run(args) -> int:
    from jaxformer.runfolder import check_run_folder

    check_run_folder(args.run)   # a wrong folder answers before JAX starts
    import jax

    from jaxformer.data.tokenizers import encode_plain, end_ids
    from jaxformer.errors import GenerationError
    from jaxformer.infer.generation import generate, generate_stream
    from jaxformer.training.checkpoint import load_run

    _check_args(args)
    r = load_run(args.run, args.step)
    tok = r.tokenizer
    ids = _prompt_ids(r, args.prompt)
    if args.slide_every < 1:
        raise GenerationError(f"--slide-every={args.slide_every} must be >= 1")
    stop = () if args.no_stop else end_ids(tok)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
              top_p=args.top_p, repetition_penalty=args.repetition_penalty,
              key=jax.random.key(args.seed), stop_tokens=stop, slide_every=args.slide_every,
              # a vocabulary padded past the tokenizer's (Qwen): ids it cannot decode are never drawn
              vocab_limit=min(tok.vocab_size, r.config.model.vocab_size))
    prompts = [ids] * args.num_samples
    text_of = _text_of(tok, [] if not args.prompt else encode_plain(tok, args.prompt), stop)
    if args.json:
        out = generate(r.model, prompts, return_logprobs=args.logprobs, top_n=args.top_n, **kw)
        _print_json(args, r, ids, kw, out, text_of)
        return _loop_hint(args, out.sequences)
    it = generate_stream(r.model, prompts, chunk_size=args.chunk, **kw)
    if args.num_samples == 1:
        return _loop_hint(args, [_stream_one(it, args.prompt, text_of, tok)])
    while True:
        try:
            next(it)
        except StopIteration as done:
            out = done.value
            break
    for b, seq in enumerate(out.sequences):
        print(f"--- sample {b + 1} of {args.num_samples} ---")
        print(args.prompt + finished_text(tok, text_of, seq))
    return _loop_hint(args, out.sequences)


def _print_json(args, r, ids: list, kw: dict, out, text_of) -> None:
    """One JSON object: the run, the prompt, the settings and each sample (text, ids, and with
    ``--logprobs`` / ``--top-n`` the log-probabilities and alternatives of each token)."""
    import json

    tok, samples = r.tokenizer, []
    for b, seq in enumerate(out.sequences):
        s = {"text": finished_text(tok, text_of, seq), "token_ids": seq, "stopped": bool(out.stopped[b])}
        if args.logprobs:
            s["logprobs"] = [float(x) for x in out.logprobs[b, :len(seq)]]
        if args.top_n:
            s["top"] = [[{"id": int(i), "text": tok.decode([int(i)]), "logprob": float(lp)}
                         for i, lp in zip(out.top_ids[b, t], out.top_logprobs[b, t])]
                        for t in range(len(seq))]
        samples.append(s)
    print(json.dumps({"run": str(r.path), "step": r.step, "prompt": args.prompt, "prompt_ids": ids,
                      "settings": {k: v for k, v in kw.items() if k != "key"} | {"seed": args.seed},
                      "samples": samples}, ensure_ascii=False))


def _stream_one(it, prompt: str, text_of, tok) -> list:
    """Print the prompt, then the sample's text as its chunks arrive."""
    import sys

    from jaxformer.data.tokenizers import ByteTokenizer

    sys.stdout.write(prompt)
    sys.stdout.flush()
    shown, seq = "", []
    for _, chunk in it:
        seq += [int(t) for t in chunk[0] if t >= 0]
        # Print only what is new; hold back a character split across chunks until it is
        # complete (byte-level: its bytes; other tokenizers: a trailing replacement character).
        text = finished_text(tok, text_of, seq)
        stable = text[:-1] if text.endswith("\ufffd") and not isinstance(tok, ByteTokenizer) else text
        if stable.startswith(shown):
            sys.stdout.write(stable[len(shown):])
            sys.stdout.flush()
            shown = stable
    final = finished_text(tok, text_of, seq)
    sys.stdout.write((final[len(shown):] if final.startswith(shown) else "") + "\n")
    return seq


def _loop_hint(args, sequences) -> int:
    """After greedy sampling that ended in a loop, say once (on stderr) which setting avoids it."""
    import sys

    from jaxformer.infer.sampling import repeating_cycle

    if args.temperature == 0 and not args.repetition_penalty and any(map(repeating_cycle, sequences)):
        print("jaxformer sample: note: greedy decoding (--temperature 0) is repeating itself; "
              "--repetition-penalty 1.3 or a temperature such as --temperature 0.8 avoids that",
              file=sys.stderr)
    return 0
