"""Typed, validated configuration: ``ModelConfig``, ``DataConfig``, ``TrainConfig``,
``MeshConfig`` and the YAML loader with ``key=value`` overrides.

Every section is a frozen dataclass validated on construction; a bad value raises
:class:`ConfigError` naming the field, the value and what is allowed. YAML is read
with ``yaml.safe_load`` only.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import os
import pathlib
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Sequence

import yaml

from .errors import ConfigError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    _check(value in allowed, f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
           f"{name}={value!r} must be an integer >= {minimum}")


def _finite_number(name: str, value: Any, minimum: float = 0.0, maximum: float = math.inf,
                   include_min: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= minimum if include_min else value > minimum) and value <= maximum
    lo = "[" if include_min else "("
    _check(ok, f"{name}={value!r} must be a finite number in {lo}{minimum}, {maximum}]")


DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and architecture of a decoder-only transformer (see DESIGN.md's knob table)."""

    vocab_size: int = 256
    d_model: int = 128
    n_head: int = 4
    n_layer: int = 4
    d_ff: Optional[int] = None          # default 4 * d_model
    max_len: int = 256                  # context length (size of the position table)
    n_kv_head: Optional[int] = None     # grouped-query attention when < n_head; default n_head
    norm_position: str = "pre"          # pre | post | none
    norm: str = "layernorm"             # layernorm | rmsnorm
    norm_eps: float = 1e-5
    activation: str = "gelu"            # relu | gelu (tanh approximation) | swiglu
    positions: str = "learned"          # learned | sinusoidal | rope | none
    rope_theta: float = 10000.0
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    dtype: str = "float32"              # compute dtype
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat: str = "none"                 # none | full | dots
    kernels: str = "auto"               # auto | textbook | cpu | cudnn (see jaxformer.kernels)
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_head", "n_layer", "max_len"):
            _positive_int(f"model.{name}", getattr(self, name))
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        _positive_int("model.d_ff", self.d_ff)
        _check(self.d_model % self.n_head == 0,
               f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}")
        head_dim = self.d_model // self.n_head
        if self.n_kv_head is not None:
            _positive_int("model.n_kv_head", self.n_kv_head)
            _check(self.n_head % self.n_kv_head == 0,
                   f"model.n_head={self.n_head} is not divisible by model.n_kv_head={self.n_kv_head}")
        _choice("model.norm_position", self.norm_position, ("pre", "post", "none"))
        _choice("model.norm", self.norm, ("layernorm", "rmsnorm"))
        _choice("model.activation", self.activation, ("relu", "gelu", "swiglu"))
        _choice("model.positions", self.positions, ("learned", "sinusoidal", "rope", "none"))
        _choice("model.dtype", self.dtype, DTYPES)
        _choice("model.param_dtype", self.param_dtype, DTYPES)
        _choice("model.remat", self.remat, ("none", "full", "dots"))
        _choice("model.kernels", self.kernels, ("auto", "textbook", "cpu", "cudnn"))
        _finite_number("model.dropout", self.dropout, 0.0, 1.0)
        _check(self.dropout < 1.0, f"model.dropout={self.dropout!r} must be < 1")
        _finite_number("model.norm_eps", self.norm_eps, 0.0, 1.0, include_min=False)
        _finite_number("model.init_std", self.init_std, 0.0, 10.0, include_min=False)
        _finite_number("model.rope_theta", self.rope_theta, 1.0)
        for name in ("bias", "tie_embeddings", "scan_layers"):
            _check(isinstance(getattr(self, name), bool),
                   f"model.{name}={getattr(self, name)!r} must be true or false")
        if self.positions == "rope":
            _check(head_dim % 2 == 0, f"model.d_model/n_head={head_dim} must be even for rope positions")
        if self.positions == "sinusoidal":
            _check(self.d_model % 2 == 0, f"model.d_model={self.d_model} must be even for sinusoidal positions")

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (``n_kv_head`` or ``n_head``)."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it is tokenized."""

    path: str = "pydoc"                 # a file, a folder of .txt files, "pydoc" or "shakespeare"
    tokenizer: str = "char"             # char | byte | bpe
    vocab_size: int = 1024              # for bpe only
    val_fraction: float = 0.1

    def __post_init__(self):
        _check(isinstance(self.path, str) and self.path != "", f"data.path={self.path!r} must be a non-empty string")
        _choice("data.tokenizer", self.tokenizer, ("char", "byte", "bpe"))
        _positive_int("data.vocab_size", self.vocab_size, 258)
        _finite_number("data.val_fraction", self.val_fraction, 0.0, 0.5, include_min=False)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run-loop settings."""

    batch_size: int = 16
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    decay_steps: Optional[int] = None   # default max_steps
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0              # 0 disables clipping
    grad_accum: int = 1
    eval_interval: int = 250
    eval_steps: int = 20
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2
    log_interval: int = 10
    seed: int = 0
    dtype: str = "float32"              # compute dtype for training (params stay float32)
    on_nonfinite: str = "stop"          # stop | skip
    sample_tokens: int = 200            # length of the sample printed at the end (0 = none)

    def __post_init__(self):
        for name in ("batch_size", "max_steps", "grad_accum", "eval_interval", "eval_steps",
                     "checkpoint_interval", "keep_checkpoints", "log_interval"):
            _positive_int(f"train.{name}", getattr(self, name))
        _positive_int("train.warmup_steps", self.warmup_steps, 0)
        _positive_int("train.seed", self.seed, 0)
        _positive_int("train.sample_tokens", self.sample_tokens, 0)
        if self.decay_steps is not None:
            _positive_int("train.decay_steps", self.decay_steps)
        _finite_number("train.lr", self.lr, 0.0, 10.0, include_min=False)
        _finite_number("train.min_lr", self.min_lr, 0.0, 10.0)
        _check(self.min_lr <= self.lr, f"train.min_lr={self.min_lr!r} must be <= train.lr={self.lr!r}")
        _finite_number("train.weight_decay", self.weight_decay, 0.0)
        _finite_number("train.beta1", self.beta1, 0.0, 1.0)
        _finite_number("train.beta2", self.beta2, 0.0, 1.0)
        _check(self.beta1 < 1 and self.beta2 < 1, "train.beta1 and train.beta2 must be < 1")
        _finite_number("train.grad_clip", self.grad_clip, 0.0)
        _check(self.batch_size % self.grad_accum == 0,
               f"train.batch_size={self.batch_size} is not divisible by train.grad_accum={self.grad_accum}")
        _choice("train.dtype", self.dtype, DTYPES)
        _choice("train.on_nonfinite", self.on_nonfinite, ("stop", "skip"))
        _check(isinstance(self.decay_embeddings, bool),
               f"train.decay_embeddings={self.decay_embeddings!r} must be true or false")


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes (-1 = all remaining devices)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        for name in ("data", "fsdp", "tensor"):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1),
                   f"mesh.{name}={v!r} must be a positive integer or -1")
        _check([self.data, self.fsdp, self.tensor].count(-1) <= 1, "at most one mesh axis may be -1")


@dataclass(frozen=True)
class Config:
    """A whole run: ``.model``, ``.data``, ``.train``, ``.mesh``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Keys that no longer exist, with what to use instead.
RENAMED = {("model", "attention"): "model.attention was replaced by model.kernels (auto | textbook | cpu | "
                                   "cudnn): attention=explicit is kernels=textbook, attention=auto is kernels=auto"}

SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "mesh": MeshConfig}


def _name(key: Any) -> str:
    """A key as it can be printed on one line: plain if an identifier, else its repr."""
    return key if isinstance(key, str) and key.isidentifier() else repr(key)


def _suggest(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(sorted(valid))})"


def _coerce(section: str, cls, key: str, value: Any) -> Any:
    """Make YAML/CLI scalars fit the field's declared type; reject what cannot."""
    f = {f.name: f for f in fields(cls)}[key]
    default = f.default if f.default is not dataclasses.MISSING else None
    typ = str(f.type)
    if value is None:
        if "Optional" in typ:
            return None
        raise ConfigError(f"{section}.{key}=null is not allowed")
    if "float" in typ and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if "float" in typ and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{section}.{key}={value!r} must be a number") from None
    expected = bool if "bool" in typ else int if "int" in typ else float if "float" in typ else str
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{section}.{key}={value!r} must be of type {expected.__name__}"
                          + (f" (default {default!r})" if default is not None else ""))
    return value


def config_from_dict(raw: Any) -> Config:
    """Build a validated :class:`Config` from nested plain data (e.g. parsed YAML)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(raw).__name__}")
    sections = {}
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section {_name(section)}{_suggest(str(section), SECTIONS)}")
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping, got {type(values).__name__}")
        cls = SECTIONS[section]
        names = [f.name for f in fields(cls)]
        kwargs = {}
        for key, value in values.items():
            if (section, key) in RENAMED:
                raise ConfigError(RENAMED[section, key])
            if key not in names:
                raise ConfigError(f"unknown config key {section}.{_name(key)}{_suggest(str(key), names)}")
            kwargs[key] = _coerce(section, cls, key, value)
        sections[section] = cls(**kwargs)
    return Config(**sections)


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars) to nested dict ``raw``."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"override key {dotted!r} must look like section.key (e.g. model.n_layer)")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        if raw.get(parts[0]) is None:
            raw[parts[0]] = {}
        if not isinstance(raw[parts[0]], dict):
            raise ConfigError(f"config section {parts[0]!r} must be a mapping")
        raw[parts[0]][parts[1]] = value
    return raw


def shipped_configs() -> list[str]:
    """Names of the configs shipped inside the package (``jaxformer/configs/NAME.yaml``)."""
    folder = importlib.resources.files("jaxformer") / "configs"
    return sorted(f.name[:-len(".yaml")] for f in folder.iterdir() if f.name.endswith(".yaml"))


def config_source(path: str | os.PathLike):
    """Where the config ``path`` is read from: an existing file always wins; a bare name
    (no ``.yaml``/``.yml`` suffix, no folder) is a shipped config, read as package data;
    anything else is taken as a file path. An unknown bare name is a :class:`ConfigError`
    listing the shipped names."""
    text = os.fspath(path)
    p = pathlib.Path(text).expanduser()
    if p.is_file():
        return p
    bare = text != "" and "/" not in text and os.sep not in text and not text.endswith((".yaml", ".yml"))
    if not bare:
        return p
    names = shipped_configs()
    if text not in names:
        raise ConfigError(f"config {text!r} is neither a file nor a shipped config "
                          f"(shipped: {', '.join(names)})")
    return importlib.resources.files("jaxformer") / "configs" / f"{text}.yaml"


def load_config(path: Optional[str | os.PathLike] = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (``yaml.safe_load``), apply ``section.key=value`` overrides, validate.

    ``path`` is a YAML file or the name of a shipped config (``"toy"``, ``"default"``, ...:
    see :func:`shipped_configs`); an existing file of that name wins. ``path=None`` starts
    from the defaults. Raises :class:`ConfigError` for every problem.
    """
    raw = _read_yaml(config_source(path)) if path is not None else {}
    return config_from_dict(apply_overrides(raw or {}, overrides))


def _yaml_error_where(e: Exception) -> str:
    """`` at line L, column C: problem`` (1-based, from ``e.problem_mark``) or ``: first line``."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    if mark is None:
        return f": {first}"
    return f" at line {mark.line + 1}, column {mark.column + 1}: {problem or first}"


def _read_yaml(path) -> Any:
    """The mapping in a YAML config file (``yaml.safe_load``); ConfigError for every problem."""
    source = path if hasattr(path, "read_text") else pathlib.Path(path)  # a file or package data
    try:
        with source.open("r", encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except FileNotFoundError:
        stem = pathlib.PurePath(str(path)).stem
        hint = f" (did you mean the shipped config {stem!r}?)" \
            if stem in shipped_configs() else ""
        raise ConfigError(f"config file {str(path)!r} does not exist{hint}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{_yaml_error_where(e)}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return raw or {}


def load_run_config(path: str | os.PathLike) -> Config:
    """Read a run folder's resolved ``config.yaml``, written by this or an earlier version
    (an old ``model.attention`` becomes the matching ``model.kernels``)."""
    raw = _read_yaml(path)
    model = raw.get("model") if isinstance(raw, dict) else None
    if isinstance(model, dict) and "attention" in model:
        old = model.pop("attention")
        model.setdefault("kernels", "textbook" if old == "explicit" else "auto")
    return config_from_dict(raw)


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically: temp file, then rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config.to_dict(), fh, sort_keys=False)
    os.replace(tmp, path)
