"""Run folders and Orbax checkpoints: exact save/restore, params-only checkpoints, keep-last-K,
incomplete checkpoints ignored, clear errors for folders that are not runs."""
import jaxformer
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import GPT, load_config
from jaxformer.training.checkpoint import (checkpoint_steps, load_run, restore_checkpoint, save_checkpoint,
                                           save_run_folder)
from jaxformer.data import ByteTokenizer, CharTokenizer
from jaxformer.errors import CheckpointError
from jaxformer.training.steps import make_optimizer

OVERRIDES = ["model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.max_len=16",
             "model.vocab_size=20", "train.max_steps=10"]


def _equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return (jax.tree.structure(a) == jax.tree.structure(b) and len(la) == len(lb)
            and all(np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y) for x, y in zip(la, lb)))


@pytest.fixture(scope="module")
def state():
    cfg = load_config(None, OVERRIDES)
    params = GPT(cfg.model, rngs=nnx.Rngs(0)).params()
    opt = make_optimizer(cfg.train, params)
    opt_state = opt.init(params)
    rng = np.random.default_rng(0)
    update = jax.jit(opt.update)
    for _ in range(3):   # a non-trivial optimizer state (moments, counts)
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        updates, opt_state = update(grads, opt_state, params)
        params = jax.tree.map(jnp.add, params, updates)
    return cfg, params, opt, opt_state


def test_save_restore_identical_params_and_optimizer_state(tmp_path, state):
    cfg, params, opt, opt_state = state
    save_run_folder(tmp_path, cfg, CharTokenizer("abcdefghijklmnopqrst"))
    save_checkpoint(tmp_path, 3, params, opt_state, extra={"seed": 0})
    like_p = GPT(cfg.model, rngs=nnx.Rngs(1)).params()
    ck = restore_checkpoint(tmp_path, params_like=like_p, opt_state_like=opt.init(like_p))
    assert ck["step"] == 3 and ck["meta"] == {"step": 3, "seed": 0, "format_version": 1,
                                              "jaxformer_version": jaxformer.__version__}
    assert _equal(ck["params"], params)
    assert _equal(ck["opt_state"], opt_state)
    run = load_run(tmp_path)
    assert run.step == 3 and run.tokenizer.encode("cab") == [2, 0, 1]
    assert run.config == cfg and _equal(run.model.params(), params)


def test_params_only_checkpoint_loads(tmp_path, state):
    cfg, params, _, _ = state
    save_run_folder(tmp_path, cfg, ByteTokenizer())
    save_checkpoint(tmp_path, 0, params)
    run = load_run(tmp_path, step=0)
    assert _equal(run.model.params(), params)
    assert run.meta["step"] == 0 and run.meta["format_version"] == 1


def test_incompatible_format_version_is_refused(tmp_path, state):
    cfg, params, _, _ = state
    save_checkpoint(tmp_path, 3, params, extra={"format_version": 99})
    with pytest.raises(CheckpointError, match=r"format_version=99 .*reads format_version=1"):
        restore_checkpoint(tmp_path, params_like=params)


def test_keep_last_k_and_incomplete_ignored(tmp_path, state):
    cfg, params, _, opt_state = state
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, params, opt_state, keep=2)
    assert checkpoint_steps(tmp_path) == [20, 30]
    # a save that died half-way leaves only a temporary folder: it is not a checkpoint
    (tmp_path / "checkpoints" / "40.orbax-checkpoint-tmp-123").mkdir()
    assert checkpoint_steps(tmp_path) == [20, 30]
    with pytest.raises(CheckpointError, match=r"step 5 is not in .*\[20, 30\]"):
        restore_checkpoint(tmp_path, 5)


def test_not_a_run_folder(tmp_path, state):
    with pytest.raises(CheckpointError, match="is not a run folder"):
        load_run(tmp_path)
    cfg = state[0]
    save_run_folder(tmp_path, cfg, ByteTokenizer())
    with pytest.raises(CheckpointError, match="has no complete checkpoint"):
        load_run(tmp_path)
    (tmp_path / "config.yaml").write_text("model: {n_layers: 2}\n")
    with pytest.raises(CheckpointError, match="n_layers"):
        load_run(tmp_path)


def test_restore_into_wrong_shape_is_a_checkpoint_error(tmp_path, state):
    cfg, params, _, _ = state
    save_checkpoint(tmp_path, 1, params)
    other = GPT(load_config(None, OVERRIDES + ["model.d_model=64"]).model, rngs=nnx.Rngs(0)).params()
    with pytest.raises(CheckpointError, match=r"checkpoint step 1 .*(has shape|does not match)"):
        restore_checkpoint(tmp_path, params_like=other)


def test_disk_full_keeps_previous_checkpoint(tmp_path, state):
    """A real tiny filesystem (tmpfs, needs root): the failing save is reported as a
    CheckpointError and the previous checkpoint still restores exactly."""
    import subprocess
    cfg, params, _, _ = state
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        save_checkpoint(mnt, 1, params)
        free = __import__("shutil").disk_usage(mnt).free
        (mnt / "filler").write_bytes(b"\0" * max(free - 4096, 0))
        with pytest.raises(CheckpointError, match="could not save checkpoint step 2 .*untouched"):
            save_checkpoint(mnt, 2, params)
        assert checkpoint_steps(mnt) == [1]
        assert _equal(restore_checkpoint(mnt, params_like=params)["params"], params)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
