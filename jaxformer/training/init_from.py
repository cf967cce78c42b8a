"""Fine-tuning: a new run whose parameters start from another run's checkpoint (``init_from``).

``train(config, out_dir, init_from=RUN, init_step=None)`` starts a *new* run: step 0, fresh
optimizer state, but the parameters of ``RUN``'s checkpoint (the latest, or ``init_step``)
instead of a random init. ``RUN`` fixes what the parameters depend on:

- the model: ``config.model`` may differ from ``RUN``'s only in fields that leave every
  parameter shape alone (``dropout``, ``dtype``, ``param_dtype``, ``kernels``, ``remat``,
  ``scan_layers``, ``rope_theta``, ``max_len`` without a learned position table, ...); a
  field that changes a shape is a :class:`ConfigError` naming it;
- the tokenizer: the data is encoded with ``RUN``'s ``tokenizer.json`` (``data.tokenizer``
  must name its type), and ``model.vocab_size`` stays ``RUN``'s even when the tokenizer has
  fewer tokens (as converted Hugging Face models may).

:func:`init_from_config` builds such a config the way ``jaxformer train --init-from RUN``
does: ``RUN``'s ``config.yaml``, then a config file's sections, then ``section.key=value``
overrides. The new run folder records where it came from in ``init_from.json``
(``{"run": absolute path, "step": N}``) and in every checkpoint's ``meta["init_from"]``;
a resumed fine-tuning run that was stopped before its first checkpoint starts again from it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer.config import (Config, ModelConfig, apply_overrides, config_from_dict, config_source,
                              load_config, read_yaml)
from jaxformer.data.tokenizers import load_tokenizer
from jaxformer.errors import CheckpointError, ConfigError, DataError
from jaxformer.model.modules import model_class
from jaxformer.runfolder import CONFIG_FILE, INIT_FILE, TOKENIZER_FILE
from jaxformer.training.checkpoint import checkpoint_steps, restore_checkpoint

#: ``data`` keys that describe the tokenizer, which ``init_from`` fixes.
TOKENIZER_KEYS = ("tokenizer", "vocab_size")


@dataclass(frozen=True)
class InitSource:
    """The run a fine-tuning run starts from: its folder (absolute), checkpoint ``step``,
    ``config`` and ``tokenizer``."""

    run: pathlib.Path
    step: int
    config: Config
    tokenizer: Any

    def record(self) -> dict:
        """``{"run", "step"}``: what ``init_from.json`` and checkpoint meta hold."""
        return {"run": str(self.run), "step": int(self.step)}


def open_init_source(run_dir, step: Optional[int] = None) -> InitSource:
    """The run folder ``run_dir`` as a starting point (config, tokenizer, checkpoint step;
    the parameters are read later by :func:`load_init_params`). :class:`CheckpointError`
    when it is not a run folder, has no complete checkpoint or no checkpoint ``step``."""
    name = os.fspath(run_dir)
    run = pathlib.Path(run_dir).expanduser()
    if not run.is_dir():
        raise CheckpointError(f"init_from={name!r} does not exist or is not a folder")
    for f in (CONFIG_FILE, TOKENIZER_FILE):
        if not (run / f).is_file():
            raise CheckpointError(f"init_from={name!r} is not a run folder (no {f})")
    steps = checkpoint_steps(run)
    if not steps:
        raise CheckpointError(f"init_from={name!r} has no complete checkpoint (checkpoints/ is "
                              "empty or missing)")
    if step is not None and step not in steps:
        raise CheckpointError(f"init_step={step!r} is not a checkpoint of init_from={name!r} "
                              f"(steps: {', '.join(map(str, steps))})")
    try:
        config = load_config(run / CONFIG_FILE)
        tokenizer = load_tokenizer(run / TOKENIZER_FILE)
    except (ConfigError, DataError) as e:
        raise CheckpointError(f"init_from={name!r}: {e}") from None
    return InitSource(run=run.resolve(), step=steps[-1] if step is None else int(step),
                      config=config, tokenizer=tokenizer)


def _shapes(model: ModelConfig) -> dict:
    flat = jax.tree_util.tree_flatten_with_path(model_class(model).abstract(model).params())[0]
    return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in flat}


def check_init_compatible(config: Config, source: InitSource) -> None:
    """:class:`ConfigError` unless ``config`` can start from ``source``: every parameter
    shape as in ``source``'s model (the message names the first model field, in declaration
    order, that changes one) and ``data.tokenizer`` the type of ``source``'s tokenizer."""
    src, new = source.config.model, config.model
    where = f"init_from={str(source.run)!r}"
    want = _shapes(src)
    if _shapes(new) != want:
        changed = [f.name for f in dataclasses.fields(ModelConfig) if getattr(src, f.name) != getattr(new, f.name)]
        for name in changed:
            try:
                alone = dataclasses.replace(src, **{name: getattr(new, name)})
            except ConfigError:   # valid only together with another change (e.g. n_head and head_dim)
                continue
            if _shapes(alone) != want:
                raise ConfigError(
                    f"model.{name}={getattr(new, name)!r} changes the parameter shapes of {where} (its "
                    f"model.{name}={getattr(src, name)!r}); starting from its weights allows only model "
                    "fields that keep the shapes (dropout, dtype, kernels, remat, scan_layers, ...)")
        raise ConfigError(f"model.{', model.'.join(changed)} together change the parameter shapes of "
                          f"{where}; starting from its weights allows only model fields that keep them")
    kind = source.tokenizer.to_dict()["type"]
    if config.data.tokenizer != kind:
        raise ConfigError(f"data.tokenizer={config.data.tokenizer!r} differs from the {kind!r} tokenizer of "
                          f"{where}, which encodes the data of a run started from it")


def init_from_config(run_dir, path=None, overrides: Sequence[str] = (), step: Optional[int] = None) -> Config:
    """The config of a new run started from ``run_dir``: its ``config.yaml``; then, with
    ``path`` (a YAML file or shipped config name), that file's ``train``, ``data`` and
    ``mesh`` sections in place of the run's, and its ``model`` keys on top of the run's
    model; then ``section.key=value`` ``overrides``. ``data.tokenizer`` and
    ``data.vocab_size`` stay the run's. Raises :class:`ConfigError` (naming the field) for a
    change of a parameter shape or of the tokenizer, :class:`CheckpointError` when
    ``run_dir`` cannot be started from."""
    source = open_init_source(run_dir, step)
    raw = source.config.to_dict()
    given = {}   # the data keys the user states (file, then overrides)
    if path is not None:
        explicit = read_yaml(config_source(path))
        # the file's own sections are checked as usual (unknown sections and keys, values);
        # its model keys are checked below, on top of the run's model
        config_from_dict({k: v for k, v in explicit.items() if not (k == "model" and isinstance(v, dict))})
        for section in ("train", "data", "mesh"):
            if section in explicit:
                raw[section] = dict(explicit[section] or {})
        if isinstance(explicit.get("model"), dict):
            raw["model"].update(explicit["model"])
        given = dict(explicit.get("data") or {})
    raw = apply_overrides(raw, overrides)
    given.update(apply_overrides({}, [o for o in overrides if o.split("=", 1)[0].strip().startswith("data.")])
                 .get("data", {}))
    run_data, kind = source.config.data, source.tokenizer.to_dict()["type"]
    for key in TOKENIZER_KEYS:
        stated = key in given and given[key] != getattr(run_data, key)
        if stated and (key == "tokenizer" or kind == "bpe"):   # vocab_size only sizes a BPE
            raise ConfigError(f"data.{key}={given[key]!r} differs from the {getattr(run_data, key)!r} of "
                              f"init_from={str(source.run)!r}, whose tokenizer a run started from it uses")
        raw["data"][key] = getattr(run_data, key)
    config = config_from_dict(raw)
    check_init_compatible(config, source)
    return config


def load_init_params(source: InitSource, model: ModelConfig, shardings=None) -> dict:
    """``source``'s checkpoint parameters, in ``model.param_dtype`` (shapes checked).
    ``shardings``: a tree of shardings like the parameters; each device then reads only its
    shards (a run on a mesh), else the whole tree lands on the default device."""
    like = model_class(source.config.model).abstract(source.config.model).params()
    if shardings is not None:
        like = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), like, shardings)
    params = restore_checkpoint(source.run, source.step, params_like=like)["params"]
    dtype = jnp.dtype(model.param_dtype)
    return jax.tree.map(lambda x: jnp.asarray(x, dtype) if np.dtype(x.dtype) != dtype else x, params)


def write_init_record(run_dir, record: dict) -> None:
    """Write ``record`` (:meth:`InitSource.record`) as ``init_from.json`` (atomically)."""
    path = pathlib.Path(run_dir) / INIT_FILE
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(record, fh)
    os.replace(tmp, path)


def read_init_record(run_dir) -> Optional[dict]:
    """``{"run", "step"}`` of a run started with ``init_from``; None for any other run."""
    path = pathlib.Path(run_dir) / INIT_FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return {"run": str(d["run"]), "step": int(d["step"])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{str(path)!r} cannot be read: {e}") from None
