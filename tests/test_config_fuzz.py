"""Fuzz the config loader and the ``--set`` parser: whatever the text, the answer is a config or an
:class:`AuditInputError` (exit code 2, a message), never another exception (a traceback).
Bounded: a fixed number of examples per test, no deadline (the machine may be busy)."""
import copy
import os

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from audit.config import build_config, load_config, parse_override  # noqa: E402
from audit.core.errors import AuditInputError  # noqa: E402
from tests.conftest import TINY  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 250)), deadline=None,
                derandomize=not os.environ.get("FUZZ_EXAMPLES"), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

KEYS = ["name", "tasks", "dataset", "model", "cut_points", "training", "splits", "defenses", "attacks", "seeds",
        "n_boot", "memory", "tracking", "wandb", "trainer", "lr", "epochs", "batch_size", "train", "aux", "test",
        "n", "scale", "strength", "image_size", "widths", "fc", "root", "attribute", "noise", "none", "synthetic",
        "small_cnn", "conv1", "fc1", "feature_ram_mb", "label", "attacker_data", "0", "1", "<<", "x"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(KEYS), st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=20,
)
PARTS = st.one_of(st.sampled_from(KEYS), st.integers(0, 3).map(str), st.text(max_size=4))
KEY_PATHS = st.one_of(
    st.lists(PARTS, min_size=1, max_size=4).map(".".join),
    st.tuples(st.sampled_from(sorted(TINY)), st.lists(PARTS, min_size=1, max_size=3))  # under a key that exists
    .map(lambda t: ".".join([t[0], *t[1]])),
)
YAML_VALUES = st.one_of(
    VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
    st.sampled_from([".inf", "-.inf", ".nan", "1e29", "1.0e+29", "[1, 1]", "{a: 1, a: 2}", "!!python/name:os.system",
                     "*a", "&a [1]", "[" * 200, "{" * 80 + "}" * 80, "'", '"', "\t", "- a", "{<<: [1]}", ""]),
    st.text(max_size=30),
)
OVERRIDES = st.one_of(st.text(max_size=40), st.tuples(KEY_PATHS, YAML_VALUES).map("=".join))


def _clear(call) -> None:
    try:
        call()
    except AuditInputError as err:
        assert str(err).strip(), "an error without a message"


@FUZZ
@given(text=st.one_of(st.text(max_size=300), VALUES.map(yaml.safe_dump),
                      st.builds(lambda v: yaml.safe_dump({**TINY, **v}) if isinstance(v, dict) else yaml.safe_dump(v),
                                VALUES)))
def test_the_config_loader_answers_any_text_with_a_config_or_a_clear_error(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _clear(lambda: load_config(path))


@FUZZ
@given(overrides=st.lists(OVERRIDES, min_size=1, max_size=3))
def test_set_answers_any_flag_with_a_config_or_a_clear_error(overrides):
    for text in overrides:
        _clear(lambda: parse_override(text))
    _clear(lambda: build_config(copy.deepcopy(TINY), "tiny.yaml", overrides))
