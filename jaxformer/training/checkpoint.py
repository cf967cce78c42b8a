"""Run folders and Orbax checkpoints.

A run folder holds everything needed to resume or sample::

    RUN/config.yaml        the resolved Config (yaml.safe_load-able)
    RUN/tokenizer.json     the tokenizer (JSON, see data.save_tokenizer)
    RUN/metrics.jsonl      one JSON object per logged step
    RUN/loss.png           train/val loss curve
    RUN/checkpoints/<step>/{params, opt_state, meta}   Orbax; only complete steps are listed
    RUN/data/              the encoded corpus (train.bin / val.bin memmaps), re-creatable
    RUN/init_from.json     a run started from another run's weights: {"run", "step"} (finetune.py)

Orbax writes each step to a temporary folder and renames it when complete, so an interrupted
save never shows up as a checkpoint; the manager keeps the last ``keep`` steps. A checkpoint
may hold parameters only (e.g. converted GPT-2 weights): ``opt_state`` and ``meta`` are optional.
"""
from __future__ import annotations

import logging
import pathlib
from dataclasses import dataclass
from typing import Any, Optional

import jax
import numpy as np

from jaxformer.config import Config, load_config, save_config
from jaxformer.data.tokenizers import load_tokenizer, save_tokenizer
from jaxformer.errors import CheckpointError, ConfigError, DataError
from jaxformer.model.modules import model_class
from jaxformer.runfolder import CHECKPOINT_DIR, CONFIG_FILE, TOKENIZER_FILE, check_run_folder
from jaxformer.version import __version__

#: Checkpoint layout version: bump when the parameter tree or the saved items change.
FORMAT_VERSION = 1


# Orbax logs every save/restore at INFO level through absl; keep the console quiet.
logging.getLogger("absl").setLevel(logging.WARNING)


@dataclass
class Run:
    """A loaded run: ``model`` (a ``jaxformer.GPT`` holding the checkpoint's parameters),
    ``config``, ``tokenizer``, ``step`` and ``path`` (the run folder)."""

    model: Any
    config: Config
    tokenizer: Any
    step: int
    path: pathlib.Path
    meta: Optional[dict] = None


def save_run_folder(run_dir, config: Config, tokenizer) -> pathlib.Path:
    """Create ``run_dir`` and write ``config.yaml`` and ``tokenizer.json`` into it."""
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / CONFIG_FILE)
    save_tokenizer(tokenizer, run_dir / TOKENIZER_FILE)
    return run_dir


def _manager(run_dir, keep: Optional[int] = None, create: bool = True):
    import orbax.checkpoint as ocp

    path = pathlib.Path(run_dir).resolve() / CHECKPOINT_DIR
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                        enable_async_checkpointing=False)
    return ocp.CheckpointManager(path, options=opts)


def checkpoint_steps(run_dir) -> list[int]:
    """The complete checkpoint steps of a run folder, ascending."""
    path = pathlib.Path(run_dir) / CHECKPOINT_DIR
    if not path.is_dir():
        return []
    partial = sorted(p.name for p in path.iterdir() if "tmp" in p.name)
    if partial:
        logging.getLogger(__name__).warning(
            "ignoring incomplete checkpoint(s) in %s (a save was interrupted): %s", path, ", ".join(partial))
    with _manager(run_dir, create=False) as mngr:
        return sorted(int(s) for s in mngr.all_steps())


def _to_host(tree):
    # jax.Arrays stay as they are, so Orbax writes each shard from the host that holds it
    # (no host ever gathers a sharded model); anything else becomes a NumPy array.
    return jax.tree.map(lambda x: x if isinstance(x, jax.Array) or not hasattr(x, "shape")
                        else np.asarray(x), tree)


def save_checkpoint(run_dir, step: int, params, opt_state=None, extra: Optional[dict] = None,
                    keep: Optional[int] = None) -> pathlib.Path:
    """Save ``params`` (and optionally ``opt_state`` and a JSON-safe ``extra`` dict) as
    checkpoint ``step`` of ``run_dir``; keep only the last ``keep`` steps (None = all).
    Returns the step's folder."""
    import orbax.checkpoint as ocp

    items = {"params": ocp.args.StandardSave(_to_host(params))}
    if opt_state is not None:
        items["opt_state"] = ocp.args.StandardSave(_to_host(opt_state))
    meta = {"step": int(step), "format_version": FORMAT_VERSION, "jaxformer_version": __version__,
            **(extra or {})}
    items["meta"] = ocp.args.JsonSave(meta)
    try:
        with _manager(run_dir, keep=keep) as mngr:
            if int(step) in mngr.all_steps():
                mngr.delete(int(step))     # re-saving a step (e.g. after a resume) replaces it
            mngr.save(int(step), args=ocp.args.Composite(**items))
            mngr.wait_until_finished()
    except Exception as e:  # disk full, permissions, I/O errors (Orbax may wrap the OSError)
        cause = e
        while cause.__cause__ is not None and not isinstance(cause, OSError):
            cause = cause.__cause__
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause).splitlines()[0]
        raise CheckpointError(
            f"could not save checkpoint step {step} in {str(pathlib.Path(run_dir) / CHECKPOINT_DIR)!r}: "
            f"{reason}; earlier checkpoints are untouched") from e
    return pathlib.Path(run_dir) / CHECKPOINT_DIR / str(int(step))


def _abstract(tree):
    """Shape structs to restore into: a leaf's own sharding when it has one (restore onto a
    mesh, shard by shard), else the default device (restore onto one device)."""
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        np.shape(x), x.dtype, sharding=getattr(x, "sharding", None) or default), tree)


def restore_checkpoint(run_dir, step: Optional[int] = None, *, params_like=None,
                       opt_state_like=None) -> dict:
    """Restore checkpoint ``step`` (default: the latest) of ``run_dir``.

    ``params_like`` / ``opt_state_like``: trees with the expected structure (arrays or shape
    structs); the restored values take their structure. Returns ``{"step", "params",
    "opt_state" (None if absent or not requested), "meta"}``.
    """
    import orbax.checkpoint as ocp

    steps = checkpoint_steps(run_dir)
    if not steps:
        raise CheckpointError(f"{str(run_dir)!r} has no complete checkpoint in {CHECKPOINT_DIR}/")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise CheckpointError(f"checkpoint step {step} is not in {str(run_dir)!r} (steps: {steps})")
    step_dir = pathlib.Path(run_dir) / CHECKPOINT_DIR / str(step)
    has = {p.name for p in step_dir.iterdir()}
    items = {"params": ocp.args.StandardRestore(None if params_like is None else _abstract(params_like))}
    if opt_state_like is not None and "opt_state" in has:
        items["opt_state"] = ocp.args.StandardRestore(_abstract(opt_state_like))
    if "meta" in has:
        items["meta"] = ocp.args.JsonRestore()
    try:
        with _manager(run_dir, create=False) as mngr:
            out = mngr.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint step {step} of {str(run_dir)!r} does not match the "
                              f"expected structure: {first}") from None
    meta = out["meta"] if "meta" in items else None
    found = (meta or {}).get("format_version", FORMAT_VERSION)
    if found != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint step {step} of {str(run_dir)!r} has format_version={found!r} (written by "
            f"jaxformer {(meta or {}).get('jaxformer_version', '?')}); this jaxformer reads "
            f"format_version={FORMAT_VERSION}")
    for name, like in (("params", params_like), ("opt_state", opt_state_like)):
        if like is not None and name in items:
            _check_shapes(out[name], like, f"checkpoint step {step} of {str(run_dir)!r}: {name}")
    return {"step": step, "params": out["params"],
            "opt_state": out["opt_state"] if "opt_state" in items else None,
            "meta": out["meta"] if "meta" in items else None}


def _check_shapes(tree, like, where: str) -> None:
    got = jax.tree_util.tree_flatten_with_path(tree)[0]
    want = jax.tree_util.tree_flatten_with_path(like)[0]
    if len(got) != len(want):
        raise CheckpointError(f"{where} has {len(got)} arrays, expected {len(want)}")
    for (path, a), (_, b) in zip(got, want):
        if np.shape(a) != np.shape(b):
            raise CheckpointError(f"{where}{jax.tree_util.keystr(path)} has shape {np.shape(a)}, "
                                  f"expected {np.shape(b)}")


def load_run(run_dir, step: Optional[int] = None) -> Run:
    """Load a run folder: config, tokenizer and a ``GPT`` with checkpoint ``step``'s
    parameters (default: the latest). Raises :class:`CheckpointError` when ``run_dir`` is
    not a run folder or has no complete checkpoint."""
    run_dir = check_run_folder(run_dir)
    try:
        config = load_config(run_dir / CONFIG_FILE)
        tokenizer = load_tokenizer(run_dir / TOKENIZER_FILE)
    except (ConfigError, DataError) as e:
        raise CheckpointError(f"run folder {str(run_dir)!r}: {e}") from None
    like = model_class(config.model).abstract(config.model).params()
    ck = restore_checkpoint(run_dir, step, params_like=like)
    model = model_class(config.model).from_params(config.model, ck["params"])
    return Run(model=model, config=config, tokenizer=tokenizer, step=ck["step"], path=run_dir,
               meta=ck["meta"])
