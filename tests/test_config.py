from __future__ import annotations

import pytest

from fedrec.config import RunConfig, parse_overrides, parse_run_config
from fedrec.errors import ConfigError


def test_round_trip_and_digest() -> None:
    config = parse_run_config({"num-rounds": "7", "lr": 0.05, "model": "gmf"})
    assert config.federation.num_rounds == 7 and config.train.lr == 0.05 and config.model.model == "gmf"
    assert parse_run_config(config.to_flat()) == config
    assert config.digest() != RunConfig().digest()


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        parse_run_config({"num-rounds": 0, "lr": "fast", "optimiser": "adam", "model": "bert", "mlp-layers": "63,8"})
    text = str(err.value)
    for part in ("num-rounds: 0 must be > 0", "lr: 'fast' is not a number", "unknown key(s) optimiser", "model: 'bert'", "mlp-layers"):
        assert part in text
    assert len(err.value.problems) == 5


def test_overrides() -> None:
    assert parse_overrides(["a=1", "b = x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])


def test_a_config_loads_without_torch_or_the_accountants() -> None:
    """Reading and checking a run config (what ``fedrec data check`` and every command do
    first) imports the settings types only: neither torch nor Opacus' accountants."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "simulations" / "ml100k-quick.toml"
    code = (
        "import json, sys\n"
        "from fedrec.config import load_config_file, parse_run_config\n"
        f"config = parse_run_config(dict(load_config_file({str(config)!r})))\n"
        "heavy = sorted(m for m in ('torch', 'opacus', 'fedrec.privacy._opacus_accountants', 'flwr') if m in sys.modules)\n"
        "print(json.dumps({'model': config.model.model, 'heavy': heavy}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"model": "dp-ease", "heavy": []}
