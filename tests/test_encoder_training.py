"""Masked-LM training of an encoder (docs/encoders.md): BERT's 15% / 80-10-10 masking, drawn
from (seed, step); the loss on the selected positions only; a tiny run learns, resumes exactly
and fills masks; the objective follows ``model.causal``."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import Encoder, interp, load_config
from jaxformer.cli import main
from jaxformer import functional as F
from jaxformer.data import pydoc_text
from jaxformer.functional_extras import mask_token_id, masked_lm_inputs
from jaxformer.infer.fill import encode_masked, fill_masks
from jaxformer.runfolder import read_metrics
from jaxformer.training.checkpoint import load_run
from jaxformer.training.loop import train
from jaxformer.training.steps import init_params, loss_fn, masking_key, objective_batch

TINY = ["model.causal=false", "model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.d_ff=64",
        "model.max_len=32", "data.tokenizer=char", "train.batch_size=16", "train.lr=3e-3", "train.min_lr=3e-4",
        "train.warmup_steps=5", "train.log_interval=5", "train.eval_interval=10", "train.eval_steps=2",
        "train.checkpoint_interval=5", "train.keep_checkpoints=2", "train.sample_tokens=0"]
TEXT = pydoc_text()[:40_000]


def tiny(*more):
    return load_config(None, TINY + list(more))


def _exactly_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_bert_masking_statistics_on_a_big_draw():
    V = 101
    mask_id = V - 1
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, mask_id, (64, 4096)), jnp.int32)
    inputs, selected = masked_lm_inputs(tokens, jax.random.key(0), mask_id=mask_id)
    inputs, selected, tokens = np.asarray(inputs), np.asarray(selected), np.asarray(tokens)
    n = selected.sum()
    assert abs(n / selected.size - 0.15) < 0.002
    assert np.array_equal(inputs[~selected], tokens[~selected])          # unselected: untouched
    masked = (inputs == mask_id)[selected].mean()
    kept = (inputs == tokens)[selected].mean()
    assert abs(masked - 0.8) < 0.005
    assert abs(kept - (0.1 + 0.1 / mask_id)) < 0.005                     # 10% kept, or random = itself
    assert abs((1 - masked - kept) - 0.1 * (1 - 1 / mask_id)) < 0.005   # 10% random, another token
    assert inputs.max() == mask_id and (inputs[~selected] < mask_id).all()


def test_masks_are_a_function_of_seed_and_step():
    cfg = tiny().model
    batch = jnp.asarray(np.random.default_rng(1).integers(0, 50, (4, 33)), jnp.int32)
    a = objective_batch(batch, cfg, masking_key(0, 3))
    b = objective_batch(batch, cfg, masking_key(0, 3))
    c = objective_batch(batch, cfg, masking_key(0, 4))
    v = objective_batch(batch, cfg, masking_key(0, 3, "val"))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[2], c[2]) and not np.array_equal(a[2], v[2])
    assert np.array_equal(a[1], batch[:, :-1])                          # targets: the T tokens
    dec = tiny("model.causal=true").model
    assert objective_batch(batch, dec) is batch                         # a decoder's batch as it is


def test_loss_counts_the_selected_positions_only():
    config = tiny("model.vocab_size=60")
    cfg = config.model
    params = init_params(config)
    inputs, targets, selected = objective_batch(
        jnp.asarray(np.random.default_rng(2).integers(0, 59, (4, 33)), jnp.int32), cfg, masking_key(0, 0))
    loss = float(loss_fn(params, (inputs, targets, selected), cfg))
    logits, _ = F.decoder(params, inputs, cfg)
    nll = -np.asarray(F.token_log_probs(logits, targets))
    np.testing.assert_allclose(loss, nll[np.asarray(selected)].mean(), rtol=1e-5)
    other = np.asarray(targets).copy()
    other[~np.asarray(selected)] = 0                                     # unselected targets do not count
    np.testing.assert_allclose(float(loss_fn(params, (inputs, jnp.asarray(other), selected), cfg)), loss, rtol=1e-6)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 30-step encoder run (shared by the tests below)."""
    return train(tiny("train.max_steps=30"), tmp_path_factory.mktemp("enc"), progress=False, data_text=TEXT)


def test_a_tiny_encoder_learns_masked_tokens(full_run):
    recs = full_run.metrics
    assert [r["step"] for r in recs] == [0, 5, 10, 15, 20, 25, 30]
    assert recs[-1]["val_loss"] < recs[0]["val_loss"] - 0.8
    losses = [r["train_loss"] for r in recs if "train_loss" in r]
    assert losses[-1] < losses[0] - 0.5
    run = load_run(full_run.run_dir)
    assert type(run.model).__name__ == "Encoder"
    assert run.config.model.vocab_size == run.tokenizer.vocab_size + 1   # + the mask token
    filled = fill_masks(run.model, run.tokenizer, "the [MASK]unction", top=3)
    assert len(filled) == 1 and filled[0]["position"] == 4
    probs = [p for _, _, p in filled[0]["candidates"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    ids = encode_masked(run.tokenizer, "a[MASK]b[MASK]", run.config.model)
    assert ids[1] == ids[3] == mask_token_id(run.config.model) and len(ids) == 4


def test_an_interrupted_and_resumed_encoder_run_is_bit_identical(full_run, tmp_path):
    first = train(tiny("train.max_steps=30"), tmp_path, progress=False, data_text=TEXT, stop_after=7)
    assert first.interrupted and first.step == 7
    second = train(tiny("train.max_steps=30"), tmp_path, resume=True, progress=False, data_text=TEXT)
    assert second.step == 30
    assert _exactly_equal(second.params, full_run.params)
    assert _exactly_equal(second.opt_state, full_run.opt_state)
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs] == [0, 5, 7, 10, 15, 20, 25, 30]
    assert [r.get("val_loss") for r in recs if r["step"] != 7] == [r.get("val_loss") for r in full_run.metrics]


def test_fill_command_prints_candidates_and_errors_in_one_line(full_run, capsys):
    run = str(full_run.run_dir)
    assert main(["fill", "--run", run, "--text", "de[MASK] f(x):", "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "[MASK] 1 (token 2):" and len(lines) == 3
    assert main(["fill", "--run", run, "--text", "no mask"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "jaxformer fill: error: text has no [MASK]: put [MASK] where the model should fill in a token"]
    assert main(["sample", "--run", run]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "jaxformer fill" in err


def test_attention_command_draws_an_encoders_full_maps(full_run, tmp_path):
    run = str(full_run.run_dir)
    for out in ("maps.png", "maps.html"):
        assert main(["attention", "--run", run, "--text", "def f(x):", "--out", str(tmp_path / out)]) == 0
        assert (tmp_path / out).stat().st_size > 1000


def test_hook_shapes_of_an_encoder_are_the_shapes_it_caches():
    """``interp.hook_shapes`` traces the model class the config asks for (it built a GPT, which
    refuses an encoder's config)."""
    config = tiny().model
    model = Encoder(config, rngs=nnx.Rngs(0))
    _, cache = interp.run_with_cache(model, jnp.zeros((2, 5), jnp.int32))
    assert interp.hook_shapes(config, 2, 5) == {n: tuple(a.shape) for n, a in cache.items()}
