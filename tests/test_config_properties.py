"""Property tests of the config parser (issue 7, item 4): any mapping parses or raises
ConfigError, never another exception; a valid config round-trips through to_flat."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.config import RunConfig, parse_run_config
from fedrec.errors import ConfigError

KEYS = sorted(RunConfig().to_flat())
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
    st.sampled_from(["inf", "-inf", "nan", "1e999", "1.0e400", "-2.5e999", "1e400.", "9" * 5000, "1.5", "0", "-1", "true", "8,4", "0,0", "prv"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
MAPPINGS = st.dictionaries(
    st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(), st.none(), st.tuples(st.integers())),
    VALUES, max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(values=MAPPINGS)
def test_any_mapping_parses_or_raises_config_error(values) -> None:
    try:
        config = parse_run_config(values)
    except ConfigError as err:
        assert str(err)
        return
    assert parse_run_config(config.to_flat()) == config


def _valid_value(default: object) -> st.SearchStrategy[object]:
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(0, 10_000)
    if isinstance(default, float):
        return st.floats(1e-6, 1e6)
    return st.just(default)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_valid_configs_round_trip(data) -> None:
    """Numbers in range for every key (string keys keep their defaults): parse(to_flat) is identity."""
    flat = RunConfig().to_flat()
    chosen = data.draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=8))
    values = {key: data.draw(_valid_value(flat[key]), label=key) for key in chosen}
    values = {k: v for k, v in values.items() if k not in ("delta", "local-delta") or float(v) < 1}  # type: ignore[arg-type]
    try:
        config = parse_run_config(values)
    except ConfigError:
        return  # a range check of its own (e.g. synthetic sizes); what matters is no other exception
    assert parse_run_config(config.to_flat()) == config
    assert parse_run_config({k: str(v) for k, v in config.to_flat().items()}) == config  # as Flower's strings
    for f in dataclasses.fields(config):
        assert getattr(config, f.name) is not None


def test_the_defaults_round_trip() -> None:
    assert parse_run_config(RunConfig().to_flat()) == RunConfig()



@pytest.mark.parametrize("raw", ["2.5", "1.0e400", "-2.5e999", 2.5, float("inf")])
def test_integer_keys_refuse_fractions_and_infinities(raw: object) -> None:
    with pytest.raises(ConfigError, match="num-rounds: .* is not an integer"):
        parse_run_config({"num-rounds": raw})


def test_integer_keys_take_whole_numbers_written_as_floats() -> None:
    assert parse_run_config({"num-rounds": "2.0"}).federation.num_rounds == 2
