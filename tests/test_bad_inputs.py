"""A matrix of bad inputs across config, data, CLI, sampling and checkpoints: each raises the
documented exception type (the CLI: one line on stderr and exit code 2) with a message that
names the offending field or value, and writes nothing half-done."""
import json

import numpy as np
import pytest
from flax import nnx

from jaxformer import GPT, ConfigError, ModelConfig, load_config
from jaxformer.training.checkpoint import load_run, save_run_folder
from jaxformer_testing.runs import TINY, tiny_run
from jaxformer.cli import main
from jaxformer.data import ByteTokenizer, CharTokenizer, load_corpus, load_tokenizer
from jaxformer.errors import CheckpointError, DataError, GenerationError
from jaxformer.infer.generation import generate

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def model():
    return GPT(load_config(None, TINY).model, rngs=nnx.Rngs(0))


# ----------------------------------------------------------------------------- config (API)
@pytest.mark.parametrize("overrides,needle", [
    (["model.d_model=100", "model.n_head=8"], "model.d_model=100 is not divisible by model.n_head=8"),
    (["train.lr=-0.1"], "train.lr=-0.1"),
    (["train.lr=.inf"], "train.lr=inf"),
    (["train.batch_size=0"], "train.batch_size=0"),
    (["model.n_layr=2"], "did you mean 'n_layer'"),
    (["model.n_layer=two"], "model.n_layer='two'"),
    (["data.tokenizer=words"], "data.tokenizer='words'"),
    (["data.val_fraction=0.9"], "data.val_fraction=0.9"),
    (["train.grad_accum=5"], "train.grad_accum=5"),
    (["mesh.data=0"], "mesh.data=0"),
    (["model.dropout=1.5"], "model.dropout=1.5"),
    (["model.bias=maybe"], "model.bias='maybe'"),
])
def test_bad_config_values(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert needle in str(e.value)


# ----------------------------------------------------------------------------- data
def test_data_file_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(DataError, match="holds no text"):
        load_corpus(str(empty))
    with pytest.raises(DataError, match="is not a file, a folder"):
        load_corpus(str(tmp_path / "missing.txt"))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"caf\xe9 au lait")
    with pytest.raises(DataError, match="not UTF-8 .* at byte 3"):
        load_corpus(str(latin1))
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="folder without text files"):
        load_corpus(str(tmp_path / "folder"))


def test_char_outside_vocabulary_named():
    with pytest.raises(DataError, match="'z'"):
        CharTokenizer.from_text("abc").encode("abz")


def test_tokenizer_file_errors(tmp_path):
    bad = tmp_path / "tok.json"
    bad.write_text("{not json")
    with pytest.raises(DataError):
        load_tokenizer(bad)
    bad.write_text(json.dumps({"type": "pickle"}))
    with pytest.raises(DataError, match="pickle"):
        load_tokenizer(bad)


# ----------------------------------------------------------------------------- sampling / generation
@pytest.mark.parametrize("kwargs,needle", [
    (dict(temperature=-1.0), "temperature=-1.0"),
    (dict(temperature=float("nan")), "temperature=nan"),
    (dict(top_p=0.0), "top_p=0.0"),
    (dict(top_p=1.5), "top_p=1.5"),
    (dict(top_k=0), "top_k=0"),
    (dict(max_new_tokens=0), "max_new_tokens=0"),
])
def test_bad_sampling_parameters(model, kwargs, needle):
    kw = dict(max_new_tokens=2, temperature=1.0)
    kw.update(kwargs)
    with pytest.raises(GenerationError) as e:
        generate(model, [1, 2, 3], key=__import__("jax").random.key(0), **kw)
    assert needle in str(e.value)


def test_bad_prompts(model):
    with pytest.raises(GenerationError, match="token id 256"):
        generate(model, [1, 256], max_new_tokens=2, temperature=0.0)
    with pytest.raises(GenerationError, match="token id -1"):
        generate(model, [-1, 2], max_new_tokens=2, temperature=0.0)


# ----------------------------------------------------------------------------- checkpoints and run folders
def test_not_a_run_folder(tmp_path):
    with pytest.raises(CheckpointError, match="is not a run folder"):
        load_run(tmp_path)


def test_checkpoint_shapes_disagree_with_config(tmp_path, run_dir):
    d = tmp_path / "mismatch"
    cfg = load_config(None, TINY + ["model.d_model=32"])
    save_run_folder(d, cfg, ByteTokenizer())
    (d / "checkpoints").symlink_to(run_dir / "checkpoints")  # d_model=16 weights
    with pytest.raises(CheckpointError, match="shape"):
        load_run(d)


# ----------------------------------------------------------------------------- CLI: one line, exit 2
#: (argv, a piece of the one-line message); also timed by benchmarks/cli_errors.py.
CLI_BAD_INPUTS = [
    (["train", "--set", "model.n_head=3"], "model.d_model=128 is not divisible by model.n_head=3"),
    (["train", "--set", "train.lr=-1"], "train.lr=-1"),
    (["train", "--config", "/nonexistent.yaml"], "does not exist"),
    (["train", "--data", "/nonexistent/corpus.txt", "--set", "train.max_steps=1"], "/nonexistent/corpus.txt"),
    (["sample", "--run", "/nonexistent-run"], "is not a run folder"),
    (["bench", "--set", "model.nlayer=2"], "did you mean 'n_layer'"),
    (["info", "--set", "model.positions=alibi"], "model.positions='alibi'"),
    (["train", "--set", "train.max_steps", "10"],
     "--set train.max_steps has no '=': it takes KEY=VALUE as one argument: write --set train.max_steps=10"),
]


@pytest.mark.parametrize("argv,needle", CLI_BAD_INPUTS)
def test_cli_errors_are_one_line_exit_2(argv, needle, capsys, tmp_path):
    if argv[0] == "train":
        argv = argv + ["--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_cli_train_into_an_existing_run_names_the_flags(run_dir, capsys):
    assert main(["train", "--out", str(run_dir), "--no-progress"]) == 2
    out, err = capsys.readouterr()
    err = err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("pass --resume to continue it or choose another --out"), err
    assert out == ""   # refused before the banner of the config it would have trained


@pytest.mark.parametrize("extra,needle", [
    (["--temperature", "-1"], "temperature=-1.0"),
    (["--top-p", "0"], "top_p=0.0"),
    (["--top-k", "0"], "top_k=0"),
    (["--num-samples", "0"], "--num-samples=0"),
])
def test_cli_sample_bad_parameters(run_dir, extra, needle, capsys):
    assert main(["sample", "--run", str(run_dir), "--prompt", "hi", "--max-new-tokens", "2"] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_model_config_direct_errors():
    with pytest.raises(ConfigError, match="model.max_len=0"):
        ModelConfig(max_len=0)
    with pytest.raises(ConfigError, match="n_kv_head=3"):
        ModelConfig(n_head=4, n_kv_head=3)
    assert np.isfinite(ModelConfig().d_ff)
