"""Crash safety: a real `jaxformer train` subprocess killed with SIGKILL at several moments
(before the first checkpoint, right after one, during a save, between saves, twice in a row)
and then resumed ends bit-identical to an uninterrupted run of the same config and seed."""
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxformer.training.checkpoint import checkpoint_steps, restore_checkpoint

pytestmark = pytest.mark.slow

STEPS = 24
ARGS = ["--no-progress", "--set", "model.vocab_size=256", "--set", "model.d_model=32",
        "--set", "model.n_head=2", "--set", "model.n_layer=2", "--set", "model.d_ff=64",
        "--set", "model.max_len=32", "--set", "model.dropout=0.1",  # dropout keys must resume too
        "--set", "data.tokenizer=byte", "--set", f"train.max_steps={STEPS}",
        "--set", "train.batch_size=4", "--set", "train.checkpoint_interval=4",
        "--set", "train.keep_checkpoints=2", "--set", "train.eval_interval=8",
        "--set", "train.eval_steps=2", "--set", "train.log_interval=2", "--set", "train.warmup_steps=2",
        "--set", "train.sample_tokens=0"]


def _cmd(corpus, out, resume=False):
    return [sys.executable, "-m", "jaxformer", "train", "--data", str(corpus), "--out", str(out)] + ARGS + \
        (["--resume"] if resume else [])


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    p = tmp_path_factory.mktemp("corpus") / "text.txt"
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sleeps", "on", "a", "warm", "mat", "while", "dogs", "bark", "Grüße", "κόσμε"]
    p.write_text(" ".join(rng.choice(words, 4000)), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = subprocess.run(_cmd(corpus, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return restore_checkpoint(out, STEPS)["params"]


def _kill_when(corpus, out, ready, resume=False, timeout=300):
    """Start training and SIGKILL it as soon as ``ready(out)`` holds."""
    p = subprocess.Popen(_cmd(corpus, out, resume), env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while p.poll() is None and time.time() - t0 < timeout:
            if ready(out):
                p.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
    return p.returncode


def _saving(out):
    d = pathlib.Path(out) / "checkpoints"
    return d.is_dir() and any("tmp" in c.name for c in d.iterdir())


def _has_step(n):
    return lambda out: (pathlib.Path(out) / "checkpoints" / str(n)).is_dir() and not _saving(out)


def _started(out):
    return (pathlib.Path(out) / "config.yaml").is_file()


def _between(out):
    m = pathlib.Path(out) / "metrics.jsonl"
    return m.is_file() and '"step": 10' in m.read_text()


@pytest.mark.parametrize("moments", [[_started], [_has_step(4)], [_saving], [_between],
                                     [_has_step(8), _has_step(16)]],
                         ids=["before-first-checkpoint", "after-checkpoint", "during-save",
                              "between-saves", "twice"])
def test_kill_and_resume_is_bit_identical(corpus, reference, tmp_path, moments):
    out = tmp_path / "run"
    for i, ready in enumerate(moments):
        rc = _kill_when(corpus, out, ready, resume=i > 0)
        assert rc == -signal.SIGKILL, f"the run ended (rc={rc}) before it could be killed"
    r = subprocess.run(_cmd(corpus, out, resume=True), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert checkpoint_steps(out)[-1] == STEPS
    final = restore_checkpoint(out, STEPS)["params"]
    import jax
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
