"""Typed settings: modes are enums, mlp-layers a tuple, noise-multiplier "calibrate" or a
fixed z; the TOML / --set spelling is unchanged."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from fedrec.config import (
    CALIBRATE,
    CentralModel,
    DPMode,
    ModelFamily,
    PrivacySettings,
    RunConfig,
    parse_run_config,
)
from fedrec.data.spec import DataPreset, DataSpec, IdType, spec_problems
from fedrec.errors import ConfigError
from fedrec.privacy.accountant import Accountant
from fedrec.training.local import Optimizer


def test_modes_parse_into_enum_members_and_write_back_as_the_same_strings() -> None:
    flat = {"dp": "off", "model": "gmf", "optimizer": "sgd", "accountant": "rdp", "central-model": "neumf"}
    config = parse_run_config(flat)
    assert config.privacy.dp is DPMode.OFF and config.model.model is ModelFamily.GMF
    assert config.train.optimizer is Optimizer.SGD and config.privacy.accountant is Accountant.RDP
    assert config.federation.central_model is CentralModel.NEUMF
    out = config.to_flat()
    assert {k: out[k] for k in flat} == flat and all(type(out[k]) is str for k in flat)
    assert parse_run_config(out) == config


@pytest.mark.parametrize(
    ("key", "bad", "choices"),
    [("dp", "on", "user, off"), ("model", "bert", "neumf, gmf, dp-ease, dp-recon"), ("optimizer", "rmsprop", "adam, sgd"),
     ("accountant", "gdp", "prv, rdp"), ("central-model", "ease", "mf, neumf"),
     ("data-preset", "ml-1m", "auto, generic, ml-100k, movielens-csv"), ("id-type", "int", "auto, string")],
)
def test_a_bad_mode_is_one_line_that_lists_the_choices(key: str, bad: str, choices: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_run_config({key: bad})
    assert err.value.problems == [f"{key}: {bad!r} must be one of {choices}"]


def test_data_preset_and_id_type_are_enums_from_the_config_to_the_loader() -> None:
    flat = {"data-preset": "movielens-csv", "id-type": "string"}
    config = parse_run_config(flat)
    assert config.data.data_preset is DataPreset.MOVIELENS_CSV and config.data.id_type is IdType.STRING
    spec = config.data.spec()
    assert spec.preset is DataPreset.MOVIELENS_CSV and spec.id_type is IdType.STRING
    out = config.to_flat()
    assert {k: out[k] for k in flat} == flat and all(type(out[k]) is str for k in flat)
    assert RunConfig().data.spec() == DataSpec()
    # a spec written with plain strings holds the members; an unknown one is reported, not raised
    assert DataSpec(preset="ml-100k", id_type="string") == DataSpec(preset=DataPreset.ML_100K, id_type=IdType.STRING)  # type: ignore[arg-type]
    assert spec_problems(DataSpec(preset="x", id_type="int")) == [  # type: ignore[arg-type]
        "data-preset: 'x' must be one of auto, generic, ml-100k, movielens-csv", "id-type: 'int' must be one of auto, string"
    ]


def test_mlp_layers_are_parsed_once_into_a_tuple() -> None:
    assert RunConfig().model.mlp_layers == (64, 32, 16, 8)
    assert parse_run_config({"mlp-layers": "16, 8"}).model.mlp_layers == (16, 8)
    assert parse_run_config({"mlp-layers": [16, 8]}).model.mlp_layers == (16, 8)  # a TOML list
    config = parse_run_config({"mlp-layers": "32,16,8"})
    assert config.to_flat()["mlp-layers"] == "32,16,8" and config.model.build(10).mlp_layers == (32, 16, 8)
    assert replace(config.model, mlp_layers="8,4").mlp_layers == (8, 4)  # type: ignore[arg-type]
    for bad in ("6x", [16, "8"], [16, True]):
        with pytest.raises(ConfigError, match="mlp-layers: .* is not a comma-separated list of integers"):
            parse_run_config({"mlp-layers": bad})


def test_replace_with_a_string_still_holds_the_enum() -> None:
    p = replace(PrivacySettings(), dp="off", accountant="rdp", noise_multiplier="calibrate")  # type: ignore[arg-type]
    assert p.dp is DPMode.OFF and p.accountant is Accountant.RDP and p.noise_multiplier is CALIBRATE
    with pytest.raises(ValueError):
        replace(PrivacySettings(), dp="on")  # type: ignore[arg-type]


def test_noise_multiplier_defaults_to_calibrate_and_a_number_fixes_z() -> None:
    assert RunConfig().privacy.noise_multiplier is CALIBRATE and RunConfig().privacy.fixed_noise is None
    assert RunConfig().to_flat()["noise-multiplier"] == "calibrate"
    assert parse_run_config({"noise-multiplier": "calibrate"}).privacy.fixed_noise is None
    assert parse_run_config({"noise-multiplier": "1.5"}).privacy.fixed_noise == 1.5
    fixed_zero = parse_run_config({"model": "neumf", "noise-multiplier": 0, "epsilon": "inf"})
    assert fixed_zero.privacy.fixed_noise == 0.0 and fixed_zero.privacy.epsilon == math.inf
    assert parse_run_config(fixed_zero.to_flat()) == fixed_zero
    assert parse_run_config({"noise-multiplier": 0, "dp": "off"}).privacy.fixed_noise == 0.0  # no DP: nothing to check


@pytest.mark.parametrize(
    ("flat", "message"),
    [
        ({"model": "neumf", "noise-multiplier": 0}, "noise-multiplier: 0 adds no noise (epsilon is infinite), so no round fits epsilon = 8"),
        ({"noise-multiplier": 0, "model": "dp-ease", "epsilon": "inf"}, "noise-multiplier: 0 with model = dp-ease"),
        ({"epsilon": "inf"}, 'noise-multiplier: "calibrate" needs a finite epsilon'),
        ({"noise-multiplier": -1}, 'noise-multiplier: -1.0 must be "calibrate" or a finite number >= 0'),
        ({"noise-multiplier": "inf"}, 'noise-multiplier: inf must be "calibrate" or a finite number >= 0'),
        ({"noise-multiplier": "auto"}, "noise-multiplier: 'auto' is neither \"calibrate\" nor a number"),
        ({"clipping-norm": "inf"}, "clipping-norm: inf is only meaningful with dp = off"),
    ],
)
def test_noise_multiplier_problems_are_one_line_each(flat: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_run_config(flat)
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith(message)
    assert "\n" not in err.value.problems[0]


def test_local_dp_is_accepted_with_either_neural_model() -> None:
    """GMF's empty MLP user vector is left out of what Opacus wraps (fedrec.privacy.local_dp),
    so local DP-SGD runs with model = gmf as with neumf."""
    for model in ("gmf", "neumf"):
        assert parse_run_config({"model": model, "local-dp": True}).privacy.local_dp
