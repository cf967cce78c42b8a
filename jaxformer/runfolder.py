"""The files of a run folder, by name, and its metrics log.

A training run writes one folder: ``config.yaml`` (the resolved config), ``tokenizer.json``,
``metrics.jsonl`` (one JSON object per logged step), ``checkpoints/`` (Orbax), figures, and
``init_from.json`` when it started from another run's weights.
"""
from __future__ import annotations

import json
import os
import pathlib

from jaxformer.errors import CheckpointError

CONFIG_FILE = "config.yaml"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
INIT_FILE = "init_from.json"


def append_metrics(run_dir, record: dict) -> None:
    """Append one JSON object as a line of ``metrics.jsonl``."""
    with open(pathlib.Path(run_dir) / METRICS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def read_metrics(path) -> list[dict]:
    """All records of a run's ``metrics.jsonl``, one dict per line: ``path`` is the run folder
    or the ``.jsonl`` file itself. Empty when there is no such file."""
    path = pathlib.Path(path)
    if not path.is_file():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def truncate_metrics(run_dir, step: int) -> None:
    """Drop records after ``step`` (used on resume, so a resumed log has no duplicates)."""
    records = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    path = pathlib.Path(run_dir) / METRICS_FILE
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)


def check_run_folder(run_dir) -> pathlib.Path:
    """``run_dir`` as a Path when it holds a run's ``config.yaml`` and ``tokenizer.json``;
    CheckpointError naming the missing file otherwise."""
    run_dir = pathlib.Path(run_dir)
    for name in (CONFIG_FILE, TOKENIZER_FILE):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"{str(run_dir)!r} is not a run folder (no {name})")
    return run_dir
