"""``jaxformer train``: train a decoder from a YAML config into a run folder, then print a sample."""
from __future__ import annotations

import argparse
import datetime
import pathlib

HELP = "train a model from a config (default: a small model on the built-in pydoc corpus, a few minutes on CPU)"
DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "pydoc_char_cpu.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help=f"YAML config file (default: configs/{DEFAULT_CONFIG.name}; with "
                   "--resume, the run's own config.yaml)")
    p.add_argument("--data", metavar="PATH", help="text file, folder of text files, 'pydoc' or "
                   "'shakespeare' (overrides data.path)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<config>-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--prompt", default="", help="prompt of the sample printed at the end")


def _config(args):
    from jaxformer import load_config
    from jaxformer.errors import ConfigError

    overrides = list(args.overrides) + ([f"data.path={args.data}"] if args.data else [])
    path = args.config
    if path is None and args.resume and args.out and (pathlib.Path(args.out) / "config.yaml").is_file():
        path = pathlib.Path(args.out) / "config.yaml"
    if path is None:
        if not DEFAULT_CONFIG.is_file():
            raise ConfigError(f"default config {str(DEFAULT_CONFIG)!r} is missing; pass --config FILE")
        path = DEFAULT_CONFIG
    return load_config(path, overrides), pathlib.Path(path)


#: Engine wording -> this command's flags: the library names settings and arguments, the
#: CLI user needs the flag that sets them.
FLAG_WORDING = (("resume=True", "--resume"), ("another out_dir", "another --out"),
                ("set data.path to a local text file", "pass --data PATH"))


def in_flags(message: str) -> str:
    """A library message reworded in terms of this command's flags (see ``FLAG_WORDING``)."""
    for engine, cli in FLAG_WORDING:
        message = message.replace(engine, cli)
    return message


def run(args) -> int:
    from tqdm.auto import tqdm

    from jaxformer.errors import JaxformerError
    from jaxformer.generation import sample_text
    from jaxformer.modules import count_params
    from jaxformer.parallel import maybe_initialize_distributed
    from jaxformer.training import train

    maybe_initialize_distributed()  # several hosts: JAX_COORDINATOR_ADDRESS etc. are set

    config, path = _config(args)
    if args.resume and not args.out:
        from jaxformer.errors import ConfigError
        raise ConfigError("--resume needs --out DIR, the run folder to continue")
    out = args.out or f"runs/{path.stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    print(f"run folder: {out}  (config {path}, data {config.data.path}, tokenizer {config.data.tokenizer})")
    write = print if args.no_progress else tqdm.write   # tqdm.write keeps the progress bar intact
    try:
        result = train(config, out, resume=args.resume, progress=not args.no_progress,
                       log=lambda msg: write(in_flags(msg)))
    except JaxformerError as e:
        e.args = (in_flags(str(e)),)   # same error type, the CLI's words
        raise
    n = count_params(result.params)
    last = next((r for r in reversed(result.metrics) if r.get("val_loss") is not None), None)
    summary = f"step {result.step}, {n:,} parameters"
    if last is not None:
        summary += f", val loss {last['val_loss']:.4f} at step {last['step']}"
    print(summary + f"; run folder {out}")
    if result.interrupted:
        print(f"resume with: jaxformer train --out {out} --resume")
        return 0
    if config.train.sample_tokens > 0:
        text = sample_text(result.model, result.tokenizer, args.prompt, config.train.sample_tokens,
                           seed=config.train.seed)
        print("--- sample ---")
        print(text)
        print("--------------")
    return 0
