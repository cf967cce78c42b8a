"""The public API fits on one screen: ``jaxformer.__all__`` holds at most 30 names, each one
importable and each one a row of the README's "Public API" table, and no name of the table is
missing from ``__all__``."""
import re

import jaxformer
from jaxformer_testing.docs import README


def _table_names() -> list:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Public API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([A-Za-z_][A-Za-z0-9_]*)` \|", section, re.M)


def test_all_is_small_and_importable():
    assert len(jaxformer.__all__) <= 30
    assert len(set(jaxformer.__all__)) == len(jaxformer.__all__)
    for name in jaxformer.__all__:
        assert getattr(jaxformer, name) is not None, name


def test_readme_table_lists_exactly_all():
    assert sorted(_table_names()) == sorted(jaxformer.__all__)


def test_public_contract_is_there():
    for name in ("functional", "ModelConfig", "TrainConfig", "load_config", "GPT", "generate", "attention_maps"):
        assert name in jaxformer.__all__, name
