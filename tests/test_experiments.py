"""The experiment scripts: every one runs to the end and writes its figures and summary, with
tiny sizes (`--small`) except lab 6, which runs at its normal budget (half a minute) to check
that it finds its heads; the ones that train a model are marked slow. Every script is a valid
jupytext percent-format notebook, and one of them executes top to bottom in a Jupyter kernel.
Lab 6's head detectors are also checked on hand-built attention patterns."""
import pathlib
import re
import runpy
import sys

import numpy as np
import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
SCRIPTS = sorted(EXPERIMENTS.glob("0*.py"))
ARGS_ENV = "JAXFORMER_EXPERIMENT_ARGS"


def run(name, tmp_path, monkeypatch, *extra, small=True):
    """Run ``experiments/<name>.py`` as ``python <name>.py --small --out DIR ...`` would, in this
    process; returns the script's ``result`` and its output folder."""
    out = tmp_path / name
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *(["--small"] if small else []), "--out", str(out), *extra])
    monkeypatch.delenv(ARGS_ENV, raising=False)
    monkeypatch.syspath_prepend(str(EXPERIMENTS))   # as `python <script>` would, for this test only
    namespace = runpy.run_path(str(EXPERIMENTS / f"{name}.py"), run_name="__main__")
    pngs = sorted(out.glob("*.png"))
    assert pngs and all(p.stat().st_size > 2000 for p in pngs)
    assert (out / "summary.txt").read_text().strip()
    return namespace["result"], out


def test_01_attention_by_hand(tmp_path, monkeypatch):
    result, out = run("01_attention_by_hand", tmp_path, monkeypatch)
    assert result["max_diff"] < 1e-6
    assert "4. weights" in (out / "summary.txt").read_text()


def test_02_positional_encoding(tmp_path, monkeypatch):
    result, _ = run("02_positional_encoding", tmp_path, monkeypatch)
    assert result["relative_spread"] < 1e-4


@pytest.mark.slow
def test_07_compare_with_references(tmp_path, monkeypatch):
    result, _ = run("07_compare_with_references", tmp_path, monkeypatch)
    assert any(k.startswith("flax") for k in result) and max(result.values()) < 1e-4


@pytest.mark.slow
def test_03_block_and_stack(tmp_path, monkeypatch):
    result, _ = run("03_block_and_stack", tmp_path, monkeypatch)
    assert all(abs(v - result["mean_norms"]["post"][1]) < 1e-3 for v in result["mean_norms"]["post"][1:])


@pytest.mark.slow
def test_04_train_tiny_gpt(tmp_path, monkeypatch):
    result, out = run("04_train_tiny_gpt", tmp_path, monkeypatch, "--steps", "20")
    # Trained for 20 steps, it beats its own untrained self (ln 256 = 5.55 nats/byte) by far.
    assert result["step0_val_loss"] > 5.0 and result["val_loss"] < result["step0_val_loss"] - 1.0
    assert (out / "run" / "metrics.jsonl").is_file()


@pytest.mark.slow
def test_05_sampling_and_logprobs(tmp_path, monkeypatch):
    result, _ = run("05_sampling_and_logprobs", tmp_path, monkeypatch)
    e = result["entropies"]
    assert e["greedy (T=0)"] < 1e-9 < e["T=0.5"] < e["T=1.0"] < e["T=1.5"]
    k, p = result["kept"]["top_k"], result["kept"]["top_p"]
    assert max(k, p) >= 2 * min(k, p)                  # the two panels visibly differ


@pytest.mark.slow
def test_06_multihead_patterns(tmp_path, monkeypatch):
    """At its normal budget (800 steps, about half a minute on 2 cores) lab 6 finds and names a
    previous-token head in layer 0 and an induction head in layer 1."""
    result, out = run("06_multihead_patterns", tmp_path, monkeypatch, small=False)
    assert np.shape(result["previous_token"]) == np.shape(result["induction"]) == (2, 4)
    found = {(layer, kind) for layer, _, kind, _ in result["named"]}
    assert {(0, "previous-token"), (1, "induction")} <= found
    assert max(max(row) for row in result["induction"]) > 0.8
    assert result["history"][-1]["loss_predictable"] < 0.5 < result["history"][0]["loss_predictable"]
    assert (out / "explorer.html").is_file()
    for name in ("previous_token_scores", "induction_scores", "all_heads", "named_heads", "training_scores"):
        assert (out / f"{name}.png").is_file()


def test_08_induction_heads_smoke(tmp_path, monkeypatch):
    """--small: too short to find induction heads, but every intervention's identity holds."""
    result, out = run("08_induction_heads", tmp_path, monkeypatch)
    for name in ("training", "head_scores", "ablation", "patching_residual", "patching_heads", "logit_attribution"):
        assert (out / f"{name}.png").is_file(), name
    m_clean, m_corrupted = result["logit_difference"]
    # the embeddings differ only at the changed letter: patching it there restores the clean run
    assert result["patching_residual"][0][8] == pytest.approx(1.0, abs=1e-4)
    assert sum(result["logit_attribution"].values()) == pytest.approx(m_clean, abs=1e-3)


@pytest.mark.slow
def test_08_induction_heads(tmp_path, monkeypatch):
    """At its normal budget (800 steps, about a minute on 2 cores) lab 8 finds induction heads
    in layer 1; ablating them undoes the repeated half's loss and barely moves the first half;
    they carry most of the patching effect and write the answer."""
    result, _ = run("08_induction_heads", tmp_path, monkeypatch, small=False)
    assert result["induction_heads"] and all(layer == 1 for layer, _ in result["induction_heads"])
    clean, zero = result["ablation"]["no ablation"], result["ablation"]["induction heads, zero-ablated"]
    assert clean["repeated_half"] < 0.6 and zero["repeated_half"] > clean["repeated_half"] + 2.0
    assert abs(zero["first_half"] - clean["first_half"]) < 0.3
    heads = np.asarray(result["patching_heads"])
    assert heads[1].sum() > 2 * max(heads[0].sum(), 0.0)
    attribution = result["logit_attribution"]
    from_layer1 = sum(v for k, v in attribution.items() if k.startswith("L1H"))
    assert from_layer1 > 0.9 * sum(attribution.values())


# ----------------------------------------------------------------------------- lab 6's detectors (jaxformer.interp)
def hand_built(period=5, T=15, L=2, H=3):
    """Tokens ``[1, T]`` repeating ``period`` distinct ids, and attention ``[1, L, H, T, T]``:
    head (0, 1) looks exactly one token back, head (1, 2) exactly at the token after the
    previous occurrence of the current one, every other head uniformly over the past."""
    tokens = np.resize(np.arange(10, 10 + period), T)[None]
    w = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    w = np.broadcast_to(w, (1, L, H, T, T)).copy()
    prev = np.eye(T, k=-1)
    prev[0, 0] = 1.0
    w[0, 0, 1] = prev
    ind = np.eye(T)                                      # no earlier occurrence: attend to self
    for i in range(period, T):
        ind[i] = 0.0
        ind[i, i - period + 1] = 1.0
    w[0, 1, 2] = ind
    return tokens, w


def test_detector_scores_on_hand_built_attention():
    from jaxformer.interp import head_scores, name_heads

    def previous_token_scores(w):
        return head_scores(w, tokens, ["previous-token"])["previous-token"]

    def induction_scores(w, tokens):
        return head_scores(w, tokens, ["induction"])["induction"]

    tokens, w = hand_built()
    prev, ind = previous_token_scores(w), induction_scores(w, tokens)
    assert prev.shape == ind.shape == (2, 3)
    assert prev[0, 1] == pytest.approx(1.0) and ind[1, 2] == pytest.approx(1.0)
    others = np.ones((2, 3), bool)
    others[0, 1] = others[1, 2] = False
    assert prev[others].max() < 0.4 and ind[others].max() < 0.4
    # a uniform causal head's scores are the mean of 1/(i+1) over the scored rows
    assert prev[0, 0] == pytest.approx(np.mean(1.0 / np.arange(2, 16)))
    # (every earlier occurrence's successor is a target: i // period of them at query i)
    assert ind[0, 0] == pytest.approx(np.mean([(i // 5) / (i + 1) for i in range(5, 15)]))
    named = name_heads({"previous-token": prev, "induction": ind})
    assert [(layer, h, kind) for layer, h, kind, _ in named] == [(0, 1, "previous-token"), (1, 2, "induction")]
    # averaged over examples: a second example where every head attends to itself halves it
    w2 = np.concatenate([w, np.broadcast_to(np.eye(15), w.shape)], 0)
    assert induction_scores(w2, np.concatenate([tokens, tokens]))[1, 2] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="does any token repeat"):
        induction_scores(w[:, :, :, :5, :5], tokens[:, :5])


# ----------------------------------------------------------------------------- notebooks
def test_every_experiment_is_a_percent_notebook():
    """Each script is jupytext percent format: explained cells that survive a round trip, and no
    pattern that breaks in a kernel (``__file__``, a ``__main__`` guard, parsing ``sys.argv``)."""
    jupytext = pytest.importorskip("jupytext")
    assert len(SCRIPTS) == 9
    for path in SCRIPTS:
        text = path.read_text(encoding="utf-8")
        nb = jupytext.read(path, fmt="py:percent")
        markdown = [c for c in nb.cells if c.cell_type == "markdown"]
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert len(markdown) >= 4 and len(code) >= 4, path.name
        assert markdown[0].source.startswith("# Lab "), path.name
        assert all(c.source.strip() for c in code), path.name
        assert nb.metadata["kernelspec"]["name"] == "python3", path.name
        back = jupytext.reads(jupytext.writes(nb, fmt="py:percent"), fmt="py:percent")
        assert [(c.cell_type, c.source) for c in back.cells] == [(c.cell_type, c.source) for c in nb.cells]
        for bad in ("__file__", "__name__", "sys.argv", "__doc__"):
            assert bad not in text, f"{path.name} uses {bad}, which differs in a notebook kernel"
        assert re.search(r"^result = ", text, re.M), f"{path.name} has no final `result`"


def test_notebook_executes(tmp_path, monkeypatch):
    """Lab 2 converted with jupytext runs top to bottom in a python3 kernel (seconds with
    --small) and shows its figures inline."""
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    out = tmp_path / "nb"
    monkeypatch.setenv(ARGS_ENV, f"--small --out '{out}'")
    nb = jupytext.read(EXPERIMENTS / "02_positional_encoding.py")
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(EXPERIMENTS)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4      # each figure shown inline
    assert "relative_spread" in outputs[-1]["data"]["text/plain"]
    assert "sinusoidal table" in (out / "summary.txt").read_text()
