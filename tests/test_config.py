"""Config validation, YAML loading, overrides, and the stated parameter counts of shipped configs."""
import pathlib

import jax
import pytest
from flax import nnx

from jaxformer import GPT, ConfigError, ModelConfig, TrainConfig, load_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def n_params(cfg):
    model = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    return sum(x.size for x in jax.tree.leaves(state)), sum(x.size for x in jax.tree.leaves(state["blocks"]))


@pytest.mark.parametrize("name,total,blocks", [
    ("toy", 224_640, 199_936),                 # "about 250K"
    ("toy_llama", 201_280, 184_832),           # "about 200K"
    ("default", 25_337_856, 18_914_304),       # ~19M in the blocks, ~25M with a 12,288 vocabulary
    ("shakespeare_char", 10_745_088, 10_621_440),
    ("gpt2_small", 124_439_808, 85_054_464),   # exactly Hugging Face's GPT-2 small
])
def test_shipped_config_sizes(name, total, blocks):
    cfg = load_config(CONFIGS / f"{name}.yaml").model
    assert n_params(cfg) == (total, blocks)


def test_every_shipped_config_loads():
    for path in CONFIGS.glob("*.yaml"):
        cfg = load_config(path)
        assert cfg.model.d_model % cfg.model.n_head == 0


def test_overrides_and_types(tmp_path):
    cfg = load_config(CONFIGS / "toy.yaml", ["model.n_layer=2", "train.lr=0.01", "model.bias=false"])
    assert cfg.model.n_layer == 2 and cfg.train.lr == 0.01 and cfg.model.bias is False
    assert isinstance(load_config(None, ["train.lr=1"]).train.lr, float)
    assert load_config().model == ModelConfig()


@pytest.mark.parametrize("kwargs,needle", [
    (dict(d_model=100, n_head=8), "d_model=100 is not divisible by model.n_head=8"),
    (dict(n_head=4, n_kv_head=3), "n_kv_head=3"),
    (dict(norm_position="middle"), "norm_position='middle'"),
    (dict(activation="tanh"), "activation='tanh'"),
    (dict(positions="alibi"), "positions='alibi'"),
    (dict(vocab_size=0), "vocab_size=0"),
    (dict(dropout=1.0), "dropout=1.0"),
    (dict(dtype="float64"), "dtype='float64'"),
    (dict(d_model=12, n_head=4, positions="rope"), "< head_dim=3 when odd"),
])
def test_bad_model_config(kwargs, needle):
    with pytest.raises(ConfigError, match=None) as e:
        ModelConfig(**kwargs)
    assert needle in str(e.value)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(lr=-1.0), "train.lr=-1.0"), (dict(lr=float("nan")), "train.lr=nan"),
    (dict(batch_size=0), "train.batch_size=0"), (dict(batch_size=10, grad_accum=3), "grad_accum=3"),
])
def test_bad_train_config(kwargs, needle):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**kwargs)
    assert needle in str(e.value)


@pytest.mark.parametrize("text,needle", [
    ("model:\n  n_layers: 4\n", "did you mean 'n_layer'"),
    ("modle:\n  n_layer: 4\n", "did you mean 'model'"),
    ("model:\n  n_layer: four\n", "model.n_layer='four' must be of type int"),
    ("model: [1, 2]\n", "must be a mapping"),
    ("- just\n- a list\n", "mapping of sections"),
    ("model:\n  n_layer: [\n", "not valid YAML"),
    ("train:\n  lr: .nan\n", "train.lr=nan"),
])
def test_bad_yaml(tmp_path, text, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert needle in str(e.value)


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/x.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["model.n_layer"])
    with pytest.raises(ConfigError, match="did you mean 'd_model'"):
        load_config(None, ["model.dmodel=3"])


def test_yaml_cannot_execute_code(tmp_path):
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    path.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_config(path)
    assert not marker.exists()


def test_bad_yaml_names_line_and_column(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("model:\n  n_layer: 2\n  d_model: x: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (f"config file {str(path)!r} is not valid YAML at line 3, column 13: "
                            "mapping values are not allowed here")


SHIPPED = {"default", "gpt2_small", "pydoc_char_cpu", "shakespeare_char", "shakespeare_char_cpu", "toy",
           "toy_encoder", "toy_llama"}


def test_shipped_configs_are_package_data_loaded_by_name(tmp_path, monkeypatch):
    import importlib.resources

    from jaxformer.config import shipped_configs
    folder = importlib.resources.files("jaxformer") / "configs"
    assert {f.name for f in folder.iterdir() if f.name.endswith(".yaml")} == {f"{n}.yaml" for n in SHIPPED}
    assert set(shipped_configs()) == SHIPPED
    # the repository's top-level configs/ is a symlink to the package's folder
    assert CONFIGS.resolve() == pathlib.Path(str(folder)).resolve()
    monkeypatch.chdir(tmp_path)                    # names resolve with no repository around
    for name in SHIPPED:
        assert load_config(name) == load_config(CONFIGS / f"{name}.yaml")
    (tmp_path / "toy").write_text("model: {n_layer: 1}\n", encoding="utf-8")
    assert load_config("toy").model.n_layer == 1   # an existing file of that name wins
    with pytest.raises(ConfigError, match=r"^config 'nope' is neither a file nor a shipped config "
                                          r"\(shipped: default, gpt2_small, .*, toy, toy_encoder, toy_llama\)$"):
        load_config("nope")
    with pytest.raises(ConfigError, match=r"'toy.yaml' does not exist \(did you mean the shipped config 'toy'\?\)$"):
        load_config("toy.yaml")
