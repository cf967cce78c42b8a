"""Configs as files: a YAML config (``yaml.safe_load`` only) or a shipped one by name, ``key=value``
overrides, unknown keys refused with a suggestion, and writing a resolved config back."""
from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import os
import pathlib
from dataclasses import fields
from typing import Any, Optional, Sequence

import yaml

from jaxformer.errors import ConfigError
from jaxformer.config.sections import SECTIONS, Config


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
    if "Tuple" in typ:  # a list of strings (model.layer_types)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{section}.{key}={value!r} must be a list of strings")
        return tuple(value)
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
    raw = read_yaml(config_source(path)) if path is not None else {}
    return config_from_dict(apply_overrides(raw or {}, overrides))


def _yaml_error_where(e: Exception) -> str:
    """`` at line L, column C: problem`` (1-based, from ``e.problem_mark``) or ``: first line``."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    if mark is None:
        return f": {first}"
    return f" at line {mark.line + 1}, column {mark.column + 1}: {problem or first}"


def read_yaml(path) -> Any:
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


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically: temp file, then rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config.to_dict(), fh, sort_keys=False)
    os.replace(tmp, path)
