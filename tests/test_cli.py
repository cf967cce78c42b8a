"""The console script: --help, --version, a forward pass, and one-line errors with exit code 2."""
import subprocess
import sys

import jaxformer
from jaxformer.cli import main


def test_version_and_help(capsys):
    for argv in (["--version"], ["--help"]):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0
    out = capsys.readouterr().out
    assert f"jaxformer {jaxformer.__version__}" in out and "info" in out


def test_info_forward_pass(capsys):
    assert main(["info", "--set", "model.n_layer=1", "--set", "model.max_len=8"]) == 0
    out = capsys.readouterr().out
    # 32,768 token + 1,024 position + 198,528 in the block and final norm (worked out by hand)
    assert "parameters: 232,320" in out and "(2, 8, 256)" in out


def test_bad_config_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "jaxformer", "info", "--set", "model.n_head=7"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "jaxformer info: error: model.d_model=128 is not divisible by model.n_head=7 "
        "(set model.head_dim to choose the head width)"]


# ----------------------------------------------------------------------------- shipped configs
def test_train_config_names_and_unknown_name_is_one_line(tmp_path):
    from jaxformer.cli.commands import train as command
    assert command.DEFAULT_CONFIG in jaxformer.config.shipped_configs()   # package data, no repo path
    r = subprocess.run([sys.executable, "-m", "jaxformer", "train", "--config", "nope", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "jaxformer train: error: config 'nope' is neither a file nor a shipped config (shipped: default, "
        "gpt2_small, pydoc_char_cpu, shakespeare_char, shakespeare_char_cpu, toy, toy_encoder, toy_llama)"]


# ----------------------------------------------------------------------------- Ctrl-C and resume
TINY_RUN = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.d_ff=64", "model.max_len=16",
            "data.tokenizer=byte", "train.batch_size=4", "train.warmup_steps=2", "train.log_interval=2",
            "train.eval_interval=4", "train.eval_steps=1", "train.checkpoint_interval=4",
            "train.sample_tokens=0", "train.max_steps=10"]


def _train(tmp_path, *more, out="run"):
    """``jaxformer train`` in-process on a small corpus; returns (exit code, run folder)."""
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("the cat sleeps on a warm mat while dogs bark. " * 200, encoding="utf-8")
    run = tmp_path / out
    argv = ["train", "--data", str(corpus), "--out", str(run), "--no-progress"]
    argv += [x for o in TINY_RUN for x in ("--set", o)] + list(more)
    return main(argv), run


def _last(records, key):
    r = [r for r in records if r.get(key) is not None][-1]
    return f"{r[key]:.4f} (step {r['step']}"


def test_interrupt_before_the_first_step_exits_130(tmp_path, capsys, monkeypatch):
    from jaxformer.training import loop as train_loop

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_loop, "evaluate", ctrl_c)     # Ctrl-C during the initial eval
    rc, run = _train(tmp_path)
    assert rc == 130
    out = capsys.readouterr().out
    assert f"interrupted before the first step: no loss logged yet; no checkpoint was written in {run}" in out
    assert "resume with" not in out


def test_interrupt_after_some_steps_exits_130_with_the_true_losses(tmp_path, capsys, monkeypatch):
    from jaxformer.training import loop
    from jaxformer.runfolder import read_metrics
    from jaxformer.training.checkpoint import checkpoint_steps
    real = loop.train
    monkeypatch.setattr(loop, "train", lambda *a, **k: real(*a, **k, stop_after=7))  # as Ctrl-C at 7
    rc, run = _train(tmp_path)
    assert rc == 130 and checkpoint_steps(run) == [4, 7]
    records = read_metrics(run)
    out = capsys.readouterr().out
    # the val loss is the one of step 4, not the untrained one of step 0
    assert (f"interrupted at step 7: train loss {_last(records, 'train_loss')}), val loss "
            f"{_last(records, 'val_loss')}); checkpoint saved at step 7 in {run}") in out
    assert "(step 7), val loss" in out and "(step 4)" in out
    assert f"resume with: jaxformer train --out {run} --resume" in out


def test_second_ctrl_c_during_a_checkpoint_save_completes_it_then_exits_130(tmp_path, capsys, monkeypatch):
    import signal

    from jaxformer.training import loop as train_loop
    from jaxformer.training.checkpoint import checkpoint_steps, restore_checkpoint
    real = train_loop.save_checkpoint

    def save_under_two_ctrl_c(run_dir, step, *a, **k):
        signal.raise_signal(signal.SIGINT)   # the first asks the loop to stop ...
        signal.raise_signal(signal.SIGINT)   # ... the second would abort it: it waits for the save
        return real(run_dir, step, *a, **k)
    monkeypatch.setattr(train_loop, "save_checkpoint", save_under_two_ctrl_c)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)   # pytest may run with SIGINT ignored
    try:
        rc, run = _train(tmp_path)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # the loop restored it
    finally:
        signal.signal(signal.SIGINT, before)
    assert rc == 130
    assert checkpoint_steps(run) == [4] and restore_checkpoint(run)["step"] == 4
    assert not any("tmp" in p.name for p in (run / "checkpoints").iterdir())
    out = capsys.readouterr().out
    assert "interrupted at step 4: train loss" in out and f"checkpoint saved at step 4 in {run}" in out


def test_resuming_a_finished_run_does_nothing_and_exits_0(tmp_path, capsys, monkeypatch):
    from jaxformer.infer import generation
    from jaxformer.runfolder import read_metrics

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(generation, "sample_text", ctrl_c)   # Ctrl-C during the final sample
    rc, run = _train(tmp_path, "--set", "train.sample_tokens=20")
    assert rc == 130
    records = read_metrics(run)
    out = capsys.readouterr().out
    assert (f"finished at step 10: train loss {_last(records, 'train_loss')}), val loss "
            f"{_last(records, 'val_loss')})") in out and "(step 10)" in out
    assert "sample interrupted" in out
    metrics = (run / "metrics.jsonl").read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main(["train", "--out", str(run), "--resume", "--no-progress", "--set", "train.sample_tokens=20"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run {run} is already finished at step 10 (train.max_steps=10); nothing to do")
    assert "--- sample ---" not in out
    assert (run / "metrics.jsonl").read_bytes() == metrics
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == stamps
