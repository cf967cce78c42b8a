"""Fine-tuning: ``train(..., init_from=RUN)`` / ``jaxformer train --init-from RUN`` starts a new
run from RUN's weights (step 0, fresh optimizer, RUN's model and tokenizer), records where it
came from, and refuses what cannot work with one line."""
import dataclasses
import json
import re
import shutil

import jax
import numpy as np
import pytest

from jaxformer import load_config
from jaxformer.runfolder import read_metrics
from jaxformer.training.checkpoint import checkpoint_steps, load_run, restore_checkpoint
from jaxformer.cli import main
from jaxformer.data import encode_corpus, get_batch, pydoc_text
from jaxformer.errors import ConfigError, DataError
from jaxformer.runfolder import INIT_FILE
from jaxformer.training.init_from import init_from_config
from jaxformer.training.loop import train
from jaxformer.training.steps import evaluate, init_params, loss_fn, lr_schedule

TINY = ["model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.d_ff=64", "model.max_len=32",
        "data.tokenizer=char", "train.batch_size=8", "train.lr=3e-3", "train.min_lr=3e-4",
        "train.warmup_steps=2", "train.log_interval=5", "train.eval_interval=10", "train.eval_steps=2",
        "train.checkpoint_interval=10", "train.keep_checkpoints=2", "train.sample_tokens=0"]
TEXT = pydoc_text()[:40_000]
#: A tiny corpus in the base run's alphabet: one sentence, learned in a few steps.
SMALL = "the cat sleeps on the mat. " * 200
FT = ["train.max_steps=12", "train.log_interval=1", "train.eval_interval=12", "train.seed=1",
      "train.warmup_steps=0", "train.lr=1e-2", "train.min_lr=1e-3"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 20-step run on pydoc text (checkpoints 10 and 20): the run to start from."""
    out = tmp_path_factory.mktemp("base") / "run"
    train(load_config(None, TINY + ["train.max_steps=20"]), out, progress=False, data_text=TEXT)
    return out


#: The training objective as one compiled program (called as it is, it runs op by op).
jit_loss = jax.jit(loss_fn, static_argnums=2)


def _leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_new_run_starts_from_the_runs_weights_and_learns(base, tmp_path):
    config = init_from_config(base, overrides=FT)
    ft = train(config, tmp_path / "ft", progress=False, data_text=SMALL, init_from=base)
    src = load_run(base)
    mc = src.config.model
    assert config.model == mc and config.train.seed == 1
    # the data is encoded with the source run's tokenizer, the first batch from the new seed
    data = encode_corpus(SMALL, src.tokenizer)
    batch = get_batch(data.train, 8, mc.max_len, seed=1, step=0)
    first = float(jit_loss(src.model.params(), batch, mc))
    records = read_metrics(ft.run_dir)
    assert [r["step"] for r in records][:3] == [0, 1, 2]
    # step 1's logged loss is the loss of step 0, computed before its update: the source weights
    assert records[1]["train_loss"] == pytest.approx(first, rel=1e-5)
    assert records[0]["val_loss"] == pytest.approx(
        evaluate(src.model.params(), mc, data.val, batch_size=8, steps=2, seed=1), rel=1e-5)
    random = float(jit_loss(init_params(config), batch, mc))
    assert abs(random - first) > 0.3                      # a random init would not give it
    # fresh optimizer: the schedule starts again at step 0; the loss goes down
    assert records[1]["lr"] == pytest.approx(float(lr_schedule(config.train)(0)))
    assert ft.step == 12 and records[-1]["train_loss"] < records[1]["train_loss"] - 0.5
    # provenance, RUN's tokenizer and model
    assert json.loads((ft.run_dir / INIT_FILE).read_text()) == {"run": str(base.resolve()), "step": 20}
    assert load_run(ft.run_dir).meta["init_from"] == {"run": str(base.resolve()), "step": 20}
    assert (ft.run_dir / "tokenizer.json").read_text() == (base / "tokenizer.json").read_text()
    assert load_run(ft.run_dir).config.model == mc


def test_api_errors(base, tmp_path):
    config = init_from_config(base)
    with pytest.raises(ConfigError, match="init_from and resume=True cannot be combined"):
        train(config, tmp_path / "a", init_from=base, resume=True)
    with pytest.raises(ConfigError, match="init_step=3 needs init_from"):
        train(config, tmp_path / "a", init_step=3)
    bigger = dataclasses.replace(config, model=dataclasses.replace(config.model, d_model=64))
    with pytest.raises(ConfigError, match=r"^model\.d_model=64 changes the parameter shapes of init_from="):
        train(bigger, tmp_path / "a", init_from=base, data_text=SMALL)
    with pytest.raises(DataError, match=r"character '☃' \(U\+2603\).*encoded with that run's tokenizer"):
        train(config, tmp_path / "a", init_from=base, data_text=SMALL + "☃")
    # model fields that keep the shapes may change
    ok = init_from_config(base, overrides=["model.remat=full", "model.kernels=textbook",
                                           "model.scan_layers=false", "model.dtype=bfloat16"])
    assert ok.model.remat == "full" and ok.model.d_model == 32


@pytest.mark.parametrize("extra, message", [
    (["--set", "model.n_layer=3"], r"model\.n_layer=3 changes the parameter shapes of --init-from '.*' "
                                   r"\(its model\.n_layer=2\)"),
    (["--set", "model.tie_embeddings=false"], r"model\.tie_embeddings=False changes the parameter shapes"),
    (["--set", "data.tokenizer=byte"], r"data\.tokenizer='byte' differs from the 'char' of --init-from"),
    (["--resume"], r"--init-from and --resume cannot be combined"),
    (["--step", "7"], r"--step 7 is not a checkpoint of --init-from '.*' \(steps: 10, 20\)"),
])
def test_cli_errors_are_one_line_exit_2(base, tmp_path, capsys, extra, message):
    rc = main(["train", "--init-from", str(base), "--out", str(tmp_path / "ft"), "--no-progress"] + extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("jaxformer train: error: ")
    assert re.search(message, err), err


def test_cli_errors_for_the_source_run(tmp_path, capsys, base):
    cases = [(["--init-from", str(tmp_path / "nope")], "does not exist or is not a folder"),
             (["--step", "3"], "--step 3 needs --init-from RUN")]
    empty = tmp_path / "empty"
    empty.mkdir()
    for f in ("config.yaml", "tokenizer.json"):
        (empty / f).write_text((base / f).read_text())
    cases.append((["--init-from", str(empty)], f"--init-from '{empty}' has no complete checkpoint"))
    for argv, message in cases:
        rc = main(["train", "--out", str(tmp_path / "ft"), "--no-progress"] + argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "ft").exists()


def test_cli_fine_tunes_from_a_step_and_resumes(base, tmp_path, capsys):
    data = tmp_path / "small.txt"
    data.write_text(SMALL, encoding="utf-8")
    out = tmp_path / "ft"
    argv = ["train", "--init-from", str(base), "--step", "10", "--data", str(data), "--out", str(out),
            "--no-progress", "--set", "model.dropout=0.1", "--set", "train.max_steps=2",
            "--set", "train.eval_interval=2", "--set", "train.seed=1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"weights from {base} step 10" in text and "finished at step 2" in text
    assert checkpoint_steps(out) == [2]
    assert json.loads((out / INIT_FILE).read_text()) == {"run": str(base.resolve()), "step": 10}
    run = load_run(out)
    assert run.config.model.dropout == 0.1 and run.config.data.path == str(data)
    # the step-0 val loss is that of checkpoint 10 of the base run
    mc = run.config.model
    val = encode_corpus(SMALL, run.tokenizer).val
    want = evaluate(restore_checkpoint(base, 10)["params"], mc, val, batch_size=8, steps=2, seed=1)
    assert read_metrics(out)[0]["val_loss"] == pytest.approx(want, rel=1e-5)
    # a run stopped before its first checkpoint resumes from the recorded weights again
    shutil.rmtree(out / "checkpoints")
    assert main(["train", "--out", str(out), "--resume", "--no-progress", "--set", "train.max_steps=3",
                 "--set", "train.eval_interval=3"]) == 0
    assert read_metrics(out)[0]["val_loss"] == pytest.approx(want, rel=1e-5)
    assert checkpoint_steps(out) == [3] and restore_checkpoint(out)["meta"]["init_from"]["step"] == 10
