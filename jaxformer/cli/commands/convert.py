"""``jaxformer convert``: a Hugging Face folder (or cached name) of any supported family
(Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2, GPT-NeoX, GPT-2) -> a jaxformer run folder, or a
run folder -> a Hugging Face folder that ``transformers.AutoModelForCausalLM`` loads."""
import argparse

HELP = ("convert a Hugging Face checkpoint (Llama, Mistral, Qwen2/3, Gemma 1/2, GPT-NeoX, GPT-2) "
        "into a run folder (--from-hf), or back (--from-run)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="PATH",
                     help="a Hugging Face folder (config.json + model.safetensors, sharded safetensors "
                          "or pytorch_model.bin) or a model name already in the local HF cache, e.g. gpt2")
    src.add_argument("--from-run", metavar="DIR",
                     help="a jaxformer run folder to export as a Hugging Face folder")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    p.add_argument("--step", type=int, default=None, help="with --from-run: checkpoint step (default: latest)")
    p.add_argument("--tokenizer", metavar="PATH", default=None,
                   help="with --from-hf: tokenizer to use when the HF folder has none (a folder with "
                        "tokenizer.json or vocab.json + merges.txt, and optionally tokenizer_config.json, "
                        "or a tokenizer JSON file)")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder (default: HF's own)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="parameter dtype of the run's checkpoint (--from-hf) or of the exported "
                        "model.safetensors (--from-run); default float32")
    p.add_argument("--architecture", default=None, metavar="NAME",
                   help="with --from-run: the Hugging Face class to write, e.g. MistralForCausalLM "
                        "(default: the one the run was converted from, else the one its config matches)")


def _tokenizer_from_path(path, model_folder=None):
    """The ``--tokenizer`` of ``convert --from-hf``: a folder (its tokenizer files and
    tokenizer_config.json), a jaxformer tokenizer JSON, or a ``tokenizer.json``; a Hugging
    Face one gets its BOS from the folder / post-processor and the end tokens of
    ``model_folder``'s generation_config.json and config.json."""
    import json
    import pathlib

    from jaxformer.errors import CheckpointError
    from jaxformer.data.hf_tokenizer import load_hf_tokenizer, tokenizer_from_hf_json
    p = pathlib.Path(path)
    if p.is_dir():
        tok = load_hf_tokenizer(p, model_folder=model_folder)
        if tok is None:
            raise CheckpointError(f"--tokenizer {str(p)!r} holds neither tokenizer.json nor vocab.json + merges.txt")
        return tok
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"--tokenizer {str(p)!r} cannot be read as JSON: {e}") from None
    if isinstance(d, dict) and d.get("type") in ("char", "byte", "bpe"):
        from jaxformer.data.tokenizers import tokenizer_from_dict
        return tokenizer_from_dict(d)
    try:
        from tokenizers import Tokenizer
        Tokenizer.from_str(json.dumps(d))
    except Exception as e:  # tokenizers raises plain Exceptions
        raise CheckpointError(f"--tokenizer {str(p)!r} is not a tokenizer file: {e}") from None
    return tokenizer_from_hf_json(json.dumps(d), model_folder=model_folder, where=f"--tokenizer {str(p)!r}")


def _from_hf(args) -> int:
    import time

    from jaxformer.training.checkpoint import save_checkpoint, save_run_folder
    from jaxformer.config import Config, DataConfig
    from jaxformer.errors import CheckpointError
    from jaxformer.interop import load_hf, resolve_hf_path

    t0 = time.perf_counter()
    loaded = load_hf(args.from_hf, cache_dir=args.cache_dir, dtype=args.dtype)
    model, mcfg, tok = loaded
    if args.tokenizer is not None:
        tok = _tokenizer_from_path(args.tokenizer, resolve_hf_path(args.from_hf, args.cache_dir))
    if tok is None:
        raise CheckpointError(f"{args.from_hf!r} has no tokenizer files (tokenizer.json or vocab.json + "
                              "merges.txt); pass --tokenizer PATH")
    if tok.vocab_size > mcfg.vocab_size:
        raise CheckpointError(f"tokenizer vocab_size={tok.vocab_size} exceeds the model's "
                              f"vocab_size={mcfg.vocab_size}")
    if tok.vocab_size < mcfg.vocab_size:
        print(f"note: the tokenizer has {tok.vocab_size} tokens, the model {mcfg.vocab_size}; "
              "ids the tokenizer lacks cannot be decoded")
    kind = tok.to_dict()["type"]
    data = DataConfig(tokenizer=kind, vocab_size=max(mcfg.vocab_size, 258))
    config = Config(model=mcfg, data=data)
    save_run_folder(args.out, config, tok)
    save_checkpoint(args.out, 0, model.params(),
                    extra={"source": str(args.from_hf), "hf_architecture": loaded.architecture})
    print(f"converted {args.from_hf} ({loaded.architecture}) -> {args.out}: {model.num_params():,} parameters, "
          f"{mcfg.n_layer} layers, width {mcfg.d_model}, context {mcfg.max_len}, "
          f"vocabulary {mcfg.vocab_size} ({time.perf_counter() - t0:.1f} s)")
    print(f"tokenizer: {_special_summary(tok, mcfg)}")
    return 0


def _special_summary(tok, model_config) -> str:
    """One line on the special tokens ``encode`` adds and the ids that end a sample (a decoder)
    or the mask token ``jaxformer fill`` uses (an encoder)."""
    from jaxformer.data.tokenizers import end_ids
    from jaxformer.infer.fill import mask_id_of

    def name(i):
        return repr(tok.decode([i])) if 0 <= i < tok.vocab_size else str(i)

    bos = getattr(tok, "bos_id", None)
    first = f"BOS {name(bos)} (id {bos}) first" if bos is not None else "no BOS"
    tail = "; EOS appended" if getattr(tok, "add_eos", False) else ""
    if not model_config.causal:
        mask = mask_id_of(tok, model_config)
        return f"{first}{tail}; jaxformer fill masks with {name(mask)} (id {mask})"
    stops = end_ids(tok)
    ends = ", ".join(f"{name(i)} ({i})" for i in stops) if stops else "none"
    return f"{first}{tail}; a sample stops at {ends}"


def _from_run(args) -> int:
    import json
    import pathlib

    from jaxformer.training.checkpoint import load_run
    from jaxformer.interop import save_hf

    run = load_run(args.from_run, step=args.step)
    tok = run.tokenizer if run.tokenizer.to_dict().get("type") == "bpe" else None
    hint = args.architecture or (run.meta or {}).get("hf_architecture")
    out = save_hf(run.model, args.out, tokenizer=tok, architecture=hint, dtype=args.dtype)
    arch = json.loads((pathlib.Path(out) / "config.json").read_text())["architectures"][0]
    print(f"exported {args.from_run} (step {run.step}) -> {args.out} as {arch} "
          f"(transformers.{'AutoModelForCausalLM' if run.config.model.causal else 'AutoModelForMaskedLM'}"
          f".from_pretrained loads it"
          f"{'' if tok else '; tokenizer not exported: only BPE tokenizers can be'})")
    return 0


def run(args) -> int:
    return _from_hf(args) if args.from_hf is not None else _from_run(args)
