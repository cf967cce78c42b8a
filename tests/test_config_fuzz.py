"""Property-based: whatever YAML a user writes, load_config returns a Config or raises
ConfigError (never a TypeError, KeyError, AttributeError, ...)."""
import dataclasses

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxformer import ConfigError, load_config
from jaxformer.config import SECTIONS, Config

KEYS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 6, 10 ** 6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                    st.sampled_from(["pre", "post", "none", "gelu", "relu", "swiglu", "rope", "learned",
                                     "float32", "bfloat16", "char", "byte", "bpe", "auto", "full"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                      max_leaves=5)
section = st.sampled_from(sorted(KEYS)).flatmap(
    lambda s: st.tuples(st.just(s), st.dictionaries(st.one_of(st.sampled_from(KEYS[s]), st.text(max_size=6)),
                                                    values, max_size=4)))
documents = st.one_of(st.dictionaries(st.one_of(st.sampled_from(sorted(KEYS)), st.text(max_size=6)),
                                      st.one_of(values, st.just({})), max_size=3),
                      st.lists(section, max_size=4).map(dict), values)


def _check(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert isinstance(cfg, Config)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=documents)
def test_structured_yaml_never_crashes(tmp_path_factory, doc):
    _check(tmp_path_factory, yaml.safe_dump(doc))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list("model:train: data-[]{}!&*#%@`'\"\n\t 0123abc.=,|>?")), max_size=60))
def test_arbitrary_text_never_crashes(tmp_path_factory, text):
    _check(tmp_path_factory, text)


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.text(max_size=20), max_size=4))
def test_arbitrary_overrides_never_crash(items):
    try:
        load_config(None, items)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
