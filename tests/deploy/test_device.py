"""Device files, on-device state and recommendations, key material: no processes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key, load_ssh_public_key

from fedrec.config import RunConfig, parse_run_config
from fedrec.data import Interactions
from fedrec.deploy.bundle import app_config, write_app
from fedrec.deploy.catalog import CATALOG, load_catalog
from fedrec.deploy.device import DeviceFiles, LocalDevice, load_state
from fedrec.deploy.fleet import DATA_FILE, split_fleet
from fedrec.deploy.pki import AUTHORIZED, authorized_keys, make_device_keys, make_tls
from fedrec.deploy.recommend import recommend, top_k
from fedrec.deploy.settings import split_deploy_settings
from fedrec.errors import ConfigError, DataError
from fedrec.models import init_shared, shared_spec


@pytest.fixture()
def config(tmp_path: Path) -> RunConfig:
    return parse_run_config({"model": "neumf", "gmf-dim": 4, "mlp-layers": "8,4", "seed": 1, "ledger-key": str(tmp_path / "l.pem")})


@pytest.fixture()
def fleet(ml100k: Interactions, tmp_path: Path) -> list[Path]:
    devices = split_fleet(ml100k, tmp_path / "devices", devices=3, rating_threshold=0.0, rng=np.random.default_rng(0))
    return [d.folder for d in devices]


def test_split_writes_one_user_per_device_with_the_shared_catalogue(fleet: list[Path], ml100k: Interactions) -> None:
    catalogs = [load_catalog(f / CATALOG) for f in fleet]
    assert all(c.n_items == ml100k.n_items for c in catalogs)
    assert catalogs[0].popularity.sum() == len(ml100k)
    users = set()
    for folder in fleet:
        lines = (folder / DATA_FILE).read_text().splitlines()
        assert lines[0] == "user,item,rating,timestamp"
        users |= {line.split(",")[0] for line in lines[1:]}
    assert len(users) == 3


def test_device_trains_persists_private_state_and_only_returns_the_shared_update(fleet: list[Path], config: RunConfig) -> None:
    local = LocalDevice.open(fleet[0] / DATA_FILE, config)
    shared = init_shared(local.device.model, seed=0)
    result = local.device.train(shared=shared, private=local.state.private, config=config, round_=1)
    assert set(result.update) == set(shared_spec(local.device.model))
    local.remember(shared=shared, config=config, round_=1, private=result.private)
    again = load_state(DeviceFiles.beside(fleet[0] / DATA_FILE))
    assert again.device_seed == local.state.device_seed
    assert again.private is not None and again.private.rounds_trained == 1
    np.testing.assert_array_equal(again.private.user_gmf, result.private.user_gmf)
    assert again.shared is not None and set(again.shared) == set(shared)
    # the next round starts from the saved private vectors
    reopened = LocalDevice.open(fleet[0] / DATA_FILE, config)
    assert reopened.state.private is not None
    np.testing.assert_array_equal(reopened.state.private.user_mlp, result.private.user_mlp)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user,item,rating,timestamp\n1,1,5,100\n1,x,4,101\n", "1 item id(s) are not in the catalogue"),
        ("user,item,rating,timestamp\n1,1,5,100\n1,2,4,x\n", "interactions.csv:3: timestamp 'x' is not an integer"),
        ("user,thing\n1,1\n", "interactions.csv:1: no item column recognised"),
        ("user,item,rating,timestamp\n1,1,5,100\n2,2,4,101\n1,3,4,102\n", "holds 2 users"),
        ("user,item,rating,timestamp\n1,1,5,100\n1,99999,4,101\n1,3,4,102\n", "not in the catalogue"),
        ("user,item,rating,timestamp\n1,1,5,100\n", "3 interactions"),
    ],
)
def test_malformed_device_file_is_a_clear_data_error(fleet: list[Path], config: RunConfig, text: str, message: str) -> None:
    (fleet[1] / DATA_FILE).write_text(text)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LocalDevice.open(fleet[1] / DATA_FILE, config)


def test_recommend_excludes_seen_items_and_falls_back_to_popularity(fleet: list[Path], config: RunConfig) -> None:
    folder = fleet[2]
    catalog = load_catalog(folder / CATALOG)
    seen = {int(line.split(",")[1]) for line in (folder / DATA_FILE).read_text().splitlines()[1:]}
    before = recommend(folder, k=10)
    assert before.source == "popularity" and len(before.items) == 10
    popular_unseen = [int(catalog.item_ids[i]) for i in np.argsort(-catalog.popularity, kind="stable") if int(catalog.item_ids[i]) not in seen]
    assert [r.item_id for r in before.items] == popular_unseen[:10]
    local = LocalDevice.open(folder / DATA_FILE, config)
    shared = init_shared(local.device.model, seed=0)
    result = local.device.train(shared=shared, private=None, config=config, round_=1)
    local.remember(shared=shared, config=config, round_=1, private=result.private)
    after = recommend(folder, k=10)
    assert after.source == "federated"
    assert not {r.item_id for r in after.items} & seen
    assert recommend(folder, k=10, min_history=10_000).source == "popularity"


def test_recommend_on_a_dp_ease_device_scores_with_the_release_it_received(fleet: list[Path], tmp_path: Path) -> None:
    # A DP-EASE device trains nothing private: it keeps the release (clients/device.py,
    # evaluate_ease) and scores its own positives with it, most recent weighing most.
    from fedrec.dpease.fit import EaseRelease

    folder = fleet[2]
    catalog = load_catalog(folder / CATALOG)
    rows = [line.split(",") for line in (folder / DATA_FILE).read_text().splitlines()[1:]]
    last = catalog.index_of(np.array([max(rows, key=lambda r: int(r[3]))[1]]), where=folder / DATA_FILE)[0]  # the newest item
    target = (last + 1) % catalog.n_items
    while str(catalog.item_ids[target]) in {r[1] for r in rows}:
        target = (target + 1) % catalog.n_items
    top = np.array([last, target])
    weights = np.array([[0.0, 5.0], [0.0, 0.0]])  # the newest item points at target, far above any prior
    release = EaseRelease(top_items=top, weights=weights, prior=np.zeros(catalog.n_items), score_decay=0.9)
    config = parse_run_config({"model": "dp-ease", "seed": 1, "ledger-key": str(tmp_path / "l.pem")})
    local = LocalDevice.open(folder / DATA_FILE, config)
    local.remember(shared=release.to_arrays(), config=config, round_=3)
    recs = recommend(folder, k=3)
    assert recs.source == "federated" and "DP-EASE" in recs.reason, recs.reason
    assert recs.items[0].item_id == int(catalog.item_ids[target])
    assert recommend(folder, k=3, min_history=10_000).source == "popularity"


def test_top_k_orders_by_score_and_skips_excluded() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3])
    assert top_k(scores, exclude=np.array([3]), k=3).tolist() == [1, 2, 4]
    assert top_k(scores, exclude=np.array([0, 1, 2, 3]), k=3).tolist() == [4]


def test_tls_certificate_is_signed_by_the_ca_for_the_given_hosts(tmp_path: Path) -> None:
    paths = make_tls(tmp_path, hosts=("fedrec.example", "10.0.0.7"))
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["fedrec.example"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert isinstance(load_pem_private_key(paths["key"].read_bytes(), None), ec.EllipticCurvePrivateKey)
    assert oct(paths["key"].stat().st_mode & 0o777) == "0o600"


def test_device_keys_are_ssh_nist_p384_pairs_listed_for_registration(tmp_path: Path) -> None:
    keys = make_device_keys(tmp_path, ["a", "b"])
    assert authorized_keys(tmp_path / AUTHORIZED) == [k.public.resolve() for k in keys]
    private = load_ssh_private_key(keys[0].private.read_bytes(), None)
    public = load_ssh_public_key(keys[0].public.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1)
    assert private.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]


def test_deploy_settings_are_required_and_checked() -> None:
    with pytest.raises(ConfigError) as err:
        split_deploy_settings({"seed": 1, "min-devices": 0})
    assert any("num-items" in p for p in err.value.problems) and any("min-devices" in p for p in err.value.problems)
    rest, deploy = split_deploy_settings({"seed": 1, "min-devices": 3, "num-items": 1682, "round-timeout": 60})
    assert rest == {"seed": 1} and (deploy.min_devices, deploy.n_items, deploy.round_timeout) == (3, 1682, 60.0)


def test_app_folder_lists_every_run_config_key_and_the_deployment_apps(tmp_path: Path, config: RunConfig) -> None:
    app = write_app(tmp_path / "app", app_config(config, out_dir=tmp_path / "run", min_devices=3, n_items=1682))
    project = tomllib.loads((app / "pyproject.toml").read_text())
    flwr = project["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "server.deploy:app", "clientapp": "clients.device:app"}
    from server.app import split_out_dir

    values, out_dir, resume = split_out_dir(flwr["config"])  # as the deployed ServerApp reads it
    values, deploy = split_deploy_settings(values)
    assert parse_run_config(values) == config and deploy.n_items == 1682
    assert out_dir == (tmp_path / "run").resolve() and resume is False
    assert (app / "fedrec" / "deploy" / "device.py").is_file() and (app / "clients" / "device.py").is_file()


def test_deploy_and_recommend_commands(data_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedrec.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["deploy", "split", "--out", str(tmp_path / "d"), "--devices", "2", "--data", str(data_dir)])
    assert out.exit_code == 0, out.output
    assert "num-items=1682" in out.output.replace("\n", "")
    out = runner.invoke(app, ["deploy", "keys", "--out", str(tmp_path / "k"), "--devices", "2"])
    assert out.exit_code == 0 and (tmp_path / "k" / "device-001.pub").is_file()
    out = runner.invoke(app, ["recommend", "--device-dir", str(tmp_path / "d" / "device-000"), "-k", "3"])
    assert out.exit_code == 0 and "popularity" in out.output
    out = runner.invoke(app, ["recommend", "--device-dir", str(tmp_path / "nowhere"), "-k", "3"])
    assert out.exit_code == 2 and "error" in out.output
