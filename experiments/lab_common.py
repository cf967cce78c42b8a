"""Shared plumbing for the experiment scripts: arguments, the output folder, a printed and
saved summary, the corpus, and a tiny model trained in seconds for the labs that need one."""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shlex
import sys
from typing import Callable, Optional


ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:           # run from a fresh clone without installing
    sys.path.insert(0, str(ROOT))


from jaxformer import compile_cache  # noqa: E402  (after the path above)

ARGS_ENV = "JAXFORMER_EXPERIMENT_ARGS"


def torch_gpt():
    """The eager PyTorch GPT the tests check against (``tests/jaxformer_testing/torch_gpt.py``),
    imported by its file path: tests/ never goes on sys.path (lab 7)."""
    import importlib.util

    path = ROOT / "tests" / "jaxformer_testing" / "torch_gpt.py"
    spec = importlib.util.spec_from_file_location("jaxformer_testing_torch_gpt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def in_notebook() -> bool:
    """True inside a Jupyter kernel (the experiments also run as notebooks: ``jupytext --to ipynb``)."""
    if "IPython" not in sys.modules:          # never import IPython from a plain script
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def parse(name: str, description: str, argv=None,
          extra: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> argparse.Namespace:
    """``--out DIR`` (default ``outputs/<name>/``) and ``--small`` (tiny sizes, for smoke
    tests), plus what ``extra`` adds. Creates the output folder; ``args.out`` is a Path.

    The arguments are ``$JAXFORMER_EXPERIMENT_ARGS`` (split like a shell line) followed by
    ``argv``, which defaults to the command line (``sys.argv[1:]``) in a script and to nothing
    in a notebook kernel, whose own command line is not ours: set that variable to run a
    notebook with other settings, e.g. ``JAXFORMER_EXPERIMENT_ARGS="--small"``.
    """
    ap = argparse.ArgumentParser(prog=f"{name}.py", description=description)
    ap.add_argument("--out", default=os.path.join("outputs", name), help="output folder (default %(default)s)")
    ap.add_argument("--small", action="store_true", help="tiny sizes: a smoke test in seconds")
    ap.add_argument("--no-compile-cache", action="store_true", help="do not use the persistent "
                    "compilation cache (as JAXFORMER_CACHE_DIR=off; see jaxformer.compile_cache)")
    if extra:
        extra(ap)
    if argv is None:
        argv = [] if in_notebook() else sys.argv[1:]
    args = ap.parse_args(shlex.split(os.environ.get(ARGS_ENV, "")) + list(argv))
    args.out = pathlib.Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_compile_cache:
        compile_cache.enable()
    return args


class Report:
    """Print lines and keep them; :meth:`save` writes them to ``summary.txt``."""

    def __init__(self, out: pathlib.Path):
        self.out, self.lines = out, []

    def __call__(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.lines.append(line)

    def figure(self, fig_path) -> None:
        """Name a saved figure; in a notebook, also show it below the cell."""
        self(f"  figure: {fig_path}")
        if in_notebook():
            from IPython.display import Image, display

            display(Image(filename=str(fig_path)))

    def save(self) -> pathlib.Path:
        path = self.out / "summary.txt"
        path.write_text("\n".join(self.lines) + "\n", encoding="utf-8")
        print(f"summary: {path}")
        return path


def corpus(path: Optional[str] = None) -> tuple[str, str]:
    """``(text, name)``: ``path`` if given, else Tiny Shakespeare when a local copy exists
    (never downloaded here), else the Python documentation shipped with CPython."""
    from jaxformer.data import load_corpus, shakespeare_text
    from jaxformer.errors import DataError

    if path:
        return load_corpus(path), path
    try:
        return shakespeare_text(download=False), "shakespeare"
    except DataError:
        return load_corpus("pydoc"), "pydoc"


def tiny_config(small: bool, *, n_layer: int = 2, n_head: int = 4, steps: int = 600, data: str = "pydoc"):
    """A byte-level model that trains in well under a minute on 2 CPU cores (``small``: seconds).
    ``data`` is recorded as ``data.path`` so that the run folder says what it was trained on."""
    from jaxformer import load_config

    if small:
        n_layer, d, T, steps, B = min(n_layer, 2), 32, 32, 30, 8
    else:
        d, T, B = 64, 64, 16
    over = ["model.vocab_size=256", f"model.d_model={d}", f"model.n_head={n_head}",
            f"model.n_layer={n_layer}", f"model.d_ff={4 * d}", f"model.max_len={T}",
            "model.positions=learned", "model.init_std=0.02", "data.tokenizer=byte", f"train.batch_size={B}",
            f"train.max_steps={steps}", "train.lr=3e-3", "train.min_lr=3e-4",
            f"train.warmup_steps={max(steps // 20, 1)}", f"train.eval_interval={max(steps // 6, 1)}",
            "train.eval_steps=5", f"train.checkpoint_interval={steps}", f"train.log_interval={max(steps // 60, 1)}",
            "train.sample_tokens=0", "train.weight_decay=0.01"]
    cfg = load_config(None, over)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=data))


# Prompts written in the style of each corpus, so that a model trained on it has something to
# continue (a model trained on the Python docs has never seen "ROMEO:").
PROMPTS = {
    "shakespeare": {"short": "ROMEO:\n", "long": "ROMEO:\nWhat is th"},
    "pydoc": {"short": "The ", "long": "For example, the "},
}


def prompt_for(name: str, text: Optional[str] = None, kind: str = "long") -> str:
    """A prompt that fits the corpus ``name``: a written one for Tiny Shakespeare and the Python
    docs; for any other text, the start of a line from its last tenth (the validation part)."""
    if name in PROMPTS:
        return PROMPTS[name][kind]
    if text:
        tail = text[len(text) * 9 // 10:]
        for line in tail.splitlines():
            line = line.strip()
            if len(line) >= 24 and line[0].isalpha():
                cut = line.find(" ", 12)
                return line[:cut + 1] if 0 < cut < 40 else line[:16]
    return "The "


def trained_model(args, report: Report, *, n_layer: int = 2, n_head: int = 4, steps: int = 600):
    """``args.run`` loaded with :func:`jaxformer.training.checkpoint.load_run`, or a tiny model trained
    now into ``<out>/run``. Returns ``(model, tokenizer, run_dir, corpus_name, corpus_text)``;
    the text is ``None`` when a run's corpus cannot be read here."""
    from jaxformer.training.checkpoint import load_run
    from jaxformer.errors import JaxformerError
    from jaxformer.training.loop import train

    if getattr(args, "run", None):
        run = load_run(args.run)
        name = run.config.data.path
        report(f"model: {args.run} (step {run.step}, trained on {name})")
        text = None
        if name not in PROMPTS:                   # a written prompt needs no text
            try:
                text = corpus(name)[0]
            except JaxformerError:
                pass
        return run.model, run.tokenizer, pathlib.Path(args.run), name, text
    text, name = corpus(getattr(args, "data", None))
    cfg = tiny_config(args.small, n_layer=n_layer, n_head=n_head, steps=steps, data=name)
    report(f"training a tiny byte-level model on {name} ({len(text):,} characters): "
           f"{cfg.model.n_layer} layers x {cfg.model.n_head} heads, width {cfg.model.d_model}, "
           f"{cfg.train.max_steps} steps of {cfg.train.batch_size} x {cfg.model.max_len} tokens")
    res = train(cfg, fresh(args.out / "run"), progress=False, data_text=text)
    vals = [m["val_loss"] for m in res.metrics if m.get("val_loss") is not None]
    report(f"  val loss {vals[0]:.3f} -> {vals[-1]:.3f} nats/byte")
    return res.model, res.tokenizer, res.run_dir, name, text


def fresh(run_dir: pathlib.Path) -> pathlib.Path:
    """Remove a run folder this script wrote before, so that re-running starts over."""
    import shutil

    if (run_dir / "config.yaml").is_file():
        shutil.rmtree(run_dir)
    return run_dir


def add_run_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--run", help="use this trained run folder instead of training a tiny model")
    ap.add_argument("--data", help="text file or folder for the tiny model (default: Tiny Shakespeare "
                                   "if present locally, else the Python docs)")
