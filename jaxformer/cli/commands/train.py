"""``jaxformer train``: train a decoder from a YAML config into a run folder, then print a sample."""
from __future__ import annotations

import argparse
import datetime
import pathlib
from typing import Optional

from jaxformer.cli.commands import config_names

HELP = "train a model from a config (default: a small model on the built-in pydoc corpus, a few minutes on CPU)"
#: The shipped config (``jaxformer/configs/NAME.yaml``) trained when no --config is given.
DEFAULT_CONFIG = "pydoc_char_cpu"
INTERRUPTED = 130   # the exit status after Ctrl-C (jaxformer.cli.INTERRUPTED)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE|NAME", help=f"YAML config file, or the name of a shipped "
                   f"config ({config_names()}) (default: {DEFAULT_CONFIG}; with --resume, the run's own "
                   "config.yaml; with --init-from, RUN's)")
    p.add_argument("--data", metavar="PATH|DIR", help="text file, folder of text files, 'pydoc', "
                   "'shakespeare', or a folder written by `jaxformer prepare` (its shards, tokenizer and "
                   "val split; for corpora larger than memory) (overrides data.path)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<config>-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last "
                   "checkpoint (a finished run stays as it is: raise train.max_steps to train further)")
    p.add_argument("--init-from", metavar="RUN", help="start a new run in --out from the weights of run "
                   "folder RUN (trained or converted): step 0, fresh optimizer, RUN's model and tokenizer; "
                   "--config/--set may change train.*, data.* and model fields that keep the parameter "
                   "shapes (default config: RUN's config.yaml)")
    p.add_argument("--step", type=int, metavar="N", help="with --init-from: RUN's checkpoint step "
                   "(default: the latest)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--prompt", default="", help="prompt of the sample printed at the end")


def _config(args):
    from jaxformer.config import load_config

    overrides = list(args.overrides) + ([f"data.path={args.data}"] if args.data else [])
    if args.init_from is not None:
        from jaxformer.training.init_from import init_from_config
        return init_from_config(args.init_from, args.config, overrides, step=args.step), \
            args.config or str(pathlib.Path(args.init_from) / "config.yaml")
    path = args.config
    if path is None and args.resume and args.out and (pathlib.Path(args.out) / "config.yaml").is_file():
        path = str(pathlib.Path(args.out) / "config.yaml")
    if path is None:
        path = DEFAULT_CONFIG
    return load_config(path, overrides), str(path)


#: Engine wording -> this command's flags: the library names settings and arguments, the
#: CLI user needs the flag that sets them.
FLAG_WORDING = (("resume=True", "--resume"), ("another out_dir", "another --out"),
                ("set data.path to a local text file", "pass --data PATH"),
                ("init_from=", "--init-from "), ("init_step=", "--step "))


def in_flags(message: str) -> str:
    """A library message reworded in terms of this command's flags (see ``FLAG_WORDING``)."""
    for engine, cli in FLAG_WORDING:
        message = message.replace(engine, cli)
    return message


def losses(records: list, upto: Optional[int] = None) -> str:
    """``train loss X (step s), val loss Y (step t)``: the last of each in ``records``
    (metrics.jsonl) at or before step ``upto``; a val loss of step 0 is marked as untrained."""
    records = [r for r in records if upto is None or r.get("step", 0) <= upto]
    parts = []
    for key, name in (("train_loss", "train loss"), ("val_loss", "val loss")):
        r = next((r for r in reversed(records) if r.get(key) is not None), None)
        if r is not None:
            parts.append(f"{name} {r[key]:.4f} (step {r['step']}{', before training' if r['step'] == 0 else ''})")
    return ", ".join(parts) or "no loss logged yet"


def summary(out, state: str, step: Optional[int], checkpoint: Optional[int], n_params: Optional[int] = None) -> str:
    """One truthful line about a run folder: how it ended (``finished`` / ``interrupted``), at
    which step, its last train and val losses from metrics.jsonl, and its checkpoint."""
    from jaxformer.runfolder import read_metrics

    records = read_metrics(out)
    if step is None or (state == "interrupted" and step == 0):
        head, upto = f"{state} before the first step", step if step is not None else checkpoint
        if upto is None:
            records = []
    else:
        head, upto = f"{state} at step {step}", step
    line = f"{head}: {losses(records, upto)}"
    if state == "finished":
        return line + (f"; {n_params:,} parameters" if n_params is not None else "") + f"; run folder {out}"
    if checkpoint is None:
        return line + f"; no checkpoint was written in {out}"
    if checkpoint == step:
        return line + f"; checkpoint saved at step {checkpoint} in {out}"
    return line + f"; the last checkpoint is step {checkpoint} in {out}"


def _finished(out, config) -> Optional[int]:
    """The last checkpoint step of run folder ``out`` when it reached ``train.max_steps``."""
    from jaxformer.training.checkpoint import checkpoint_steps

    steps = checkpoint_steps(out) if pathlib.Path(out).is_dir() else []
    return steps[-1] if steps and steps[-1] >= config.train.max_steps else None


def run(args) -> int:
    from tqdm.auto import tqdm

    from jaxformer.data.shards import is_prepared
    from jaxformer.data.texts import check_corpus_path
    from jaxformer.errors import ConfigError, JaxformerError, RunExistsError

    _check_flags(args)
    try:
        config, path = _config(args)
    except JaxformerError as e:
        e.args = (in_flags(str(e)),)
        raise
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out DIR, the run folder to continue")
    if not args.resume and args.out and _has_checkpoints(args.out):   # refused before any banner
        e = RunExistsError(args.out)
        e.args = (in_flags(str(e)),)
        raise e
    if not is_prepared(config.data.path):
        check_corpus_path(config.data.path)   # bad input answers before JAX starts
    from jaxformer.training.distributed import maybe_initialize_distributed

    maybe_initialize_distributed()  # several hosts: JAX_COORDINATOR_ADDRESS etc. are set
    stem = pathlib.PurePath(args.init_from).name + "-ft" if args.init_from and not args.config \
        else pathlib.PurePath(path).stem
    out = args.out or f"runs/{stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    if args.resume:
        done = _finished(out, config)
        if done is not None:
            print(f"run {out} is already finished at step {done} (train.max_steps={config.train.max_steps}); "
                  f"nothing to do (sample it with `jaxformer sample --run {out}`; train further with "
                  f"--resume --set train.max_steps=N)")
            return 0
    from jaxformer.model.modules import count_params
    from jaxformer.training.loop import TrainingInterrupted, train

    _announce(args, config, out, path)
    write = print if args.no_progress else tqdm.write   # tqdm.write keeps the progress bar intact
    try:
        result = train(config, out, resume=args.resume, progress=not args.no_progress,
                       log=lambda msg: write(in_flags(msg)), init_from=args.init_from, init_step=args.step)
    except JaxformerError as e:
        e.args = (in_flags(str(e)),)   # same error type, the CLI's words
        raise
    except TrainingInterrupted as e:
        print(summary(out, "interrupted", e.step, e.checkpoint))
        if e.checkpoint is not None:
            print(f"resume with: jaxformer train --out {out} --resume")
        return INTERRUPTED
    if result.interrupted:
        print(summary(out, "interrupted", result.step, result.step))
        print(f"resume with: jaxformer train --out {out} --resume")
        return INTERRUPTED
    print(summary(out, "finished", result.step, result.step, count_params(result.params)))
    return _print_sample(args, config, result, out) if config.train.sample_tokens > 0 and config.model.causal else 0


def _has_checkpoints(out) -> bool:
    """Whether run folder ``out`` holds a checkpoint step folder (a file-system look, no JAX)."""
    from jaxformer.runfolder import CHECKPOINT_DIR

    folder = pathlib.Path(out) / CHECKPOINT_DIR
    return folder.is_dir() and any(p.is_dir() and p.name.isdigit() for p in folder.iterdir())


def _check_flags(args) -> None:
    from jaxformer.errors import ConfigError

    if args.init_from is not None and args.resume:
        raise ConfigError("--init-from and --resume cannot be combined: --init-from starts a new run "
                          "from RUN's weights, --resume continues the run in --out")
    if args.step is not None and args.init_from is None:
        raise ConfigError(f"--step {args.step} needs --init-from RUN, the run whose checkpoint it names")


def _announce(args, config, out, path) -> None:
    """One line: the run folder, where config, data and tokenizer come from."""
    from jaxformer.data.shards import is_prepared

    start = f", weights from {args.init_from}" + (f" step {args.step}" if args.step is not None else "") \
        if args.init_from else ""
    tokenizer = "the prepared folder's" if is_prepared(config.data.path) else config.data.tokenizer
    print(f"run folder: {out}  (config {path}, data {config.data.path}, tokenizer {tokenizer}{start})")


def _print_sample(args, config, result, out) -> int:
    """A sample of the trained model (``train.sample_tokens`` tokens after ``--prompt``)."""
    from jaxformer.infer.generation import sample_text

    try:
        text = sample_text(result.model, result.tokenizer, args.prompt, config.train.sample_tokens,
                           seed=config.train.seed)
    except KeyboardInterrupt:
        print(f"sample interrupted (training finished; `jaxformer sample --run {out}` samples it)")
        return INTERRUPTED
    print("--- sample ---")
    print(text)
    print("--------------")
    return 0
