"""Typed, validated configuration: ``ModelConfig``, ``DataConfig``, ``TrainConfig``,
``MeshConfig`` and the YAML loader with ``key=value`` overrides.

Every section is a frozen dataclass validated on construction; a bad value raises
:class:`ConfigError` naming the field, the value and what is allowed. YAML is read
with ``yaml.safe_load`` only. The sections live in :mod:`jaxformer.config.sections`, the YAML
files and overrides in :mod:`jaxformer.config.files`; every name is importable from here.
"""
from jaxformer.config.sections import (
    DTYPES, SECTIONS, Config, DataConfig, MeshConfig, ModelConfig, TrainConfig)
from jaxformer.config.files import (
    apply_overrides, config_from_dict, config_source, load_config, read_yaml, save_config, shipped_configs)

__all__ = ["DTYPES", "SECTIONS", "Config", "DataConfig", "MeshConfig", "ModelConfig", "TrainConfig", "apply_overrides",
           "config_from_dict", "config_source", "load_config", "read_yaml", "save_config", "shipped_configs"]
