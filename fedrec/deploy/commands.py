"""``fedrec deploy ...`` and ``fedrec recommend``: the operator's and the device's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from fedrec.errors import FedrecError

deploy_app = typer.Typer(help="Prepare a deployment: certificates, device keys, device data, the Flower app.", no_args_is_help=True)
console = Console()


def _fail(err: FedrecError) -> typer.Exit:
    console.print(f"[bold red]error:[/] {err}")
    return typer.Exit(code=2)


@deploy_app.command("tls")
def tls(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for ca.crt, ca.key, server.pem, server.key.")],
    host: Annotated[list[str] | None, typer.Option("--host", help="Name or IP devices use for the server (repeatable).")] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 365,
) -> None:
    """Make a CA and the SuperLink's TLS certificate and key."""
    from fedrec.deploy.pki import make_tls

    try:
        paths = make_tls(out, hosts=tuple(host or ("localhost", "127.0.0.1")), days=days)
    except FedrecError as err:
        raise _fail(err) from None
    for role, path in paths.items():
        console.print(f"{role:>7}: {path}")
    console.print("Keep ca.key offline; give ca.crt to every device (--root-certificates).")


@deploy_app.command("keys")
def keys(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for NAME.key / NAME.pub and authorized-keys.txt.")],
    devices: Annotated[int, typer.Option("--devices", "-n", help="How many device key pairs.")] = 10,
    prefix: Annotated[str, typer.Option(help="Device names are PREFIX-000, PREFIX-001, ...")] = "device",
) -> None:
    """Make one authentication key pair per device and the list of keys to register."""
    from fedrec.deploy.pki import AUTHORIZED, make_device_keys

    made = make_device_keys(out, [f"{prefix}-{k:03d}" for k in range(devices)])
    console.print(f"wrote {len(made)} key pairs; register each public key listed in {out / AUTHORIZED} with")
    console.print("  flwr supernode register PUBLIC_KEY [SUPERLINK]")


@deploy_app.command("split")
def split(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for device-NNN/ folders.")],
    devices: Annotated[int, typer.Option("--devices", "-n", help="How many devices (one user each).")] = 10,
    dataset: Annotated[str | None, typer.Option(help="ml-100k or an interactions file (default: the config's).")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Data directory (default: $FEDREC_DATA_DIR).")] = None,
    rating_threshold: Annotated[
        float | None, typer.Option(help="Ratings >= this count as positives (default: the config's).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Which users become devices.")] = 0,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML file with the data section.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a data key: key=value.")] = None,
) -> None:
    """Split a data set into per-device folders (interactions.csv + catalog.json), own ids and titles kept."""
    from fedrec.config import load_config_file, parse_overrides, parse_run_config
    from fedrec.data.location import resolve_data_dir
    from fedrec.data.sources import load_dataset
    from fedrec.deploy.fleet import split_fleet

    try:
        values = load_config_file(config) if config else {}
        values.update(parse_overrides(set_ or []))
        if dataset is not None:
            values["dataset"] = dataset
        if rating_threshold is not None:
            values["rating-threshold"] = rating_threshold
        if values.get("dataset", "ml-100k") == "ml-100k" or data:
            values["data-dir"] = str(resolve_data_dir(data or values.get("data-dir") or None))
        settings = parse_run_config(values).data
        loaded = load_dataset(settings)
        fleet = split_fleet(
            loaded, out, devices=devices, rating_threshold=settings.rating_threshold, rng=np.random.default_rng([seed, 5])
        )
    except FedrecError as err:
        raise _fail(err) from None
    console.print(f"wrote {len(fleet)} device folders under {out} (catalogue of {loaded.n_items} items: num-items={loaded.n_items})")


@deploy_app.command("app")
def app_folder(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to submit with `flwr run`.")],
    min_devices: Annotated[int, typer.Option(help="Devices to wait for before round 1.")],
    num_items: Annotated[int, typer.Option(help="Catalogue size (printed by `fedrec deploy split`).")],
    run_out: Annotated[Path, typer.Option("--run-out", help="Where the ServerApp writes results and the ledger.")] = Path(
        "runs/deployment"
    ),
    catalog: Annotated[
        Path | None,
        typer.Option("--catalog", help="catalog.json from `fedrec deploy split`, where the server reads it (item content)."),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML file of run settings.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a setting: key=value.")] = None,
) -> None:
    """Write the Flower app folder for a deployment (deployment ServerApp + device ClientApp)."""
    from fedrec.config import load_config_file, parse_overrides, parse_run_config
    from fedrec.deploy.bundle import app_config, write_app

    try:
        values = load_config_file(config) if config else {}
        values.update(parse_overrides(set_ or []))
        run_config = parse_run_config(values)
        path = write_app(out, app_config(
            run_config, out_dir=run_out.resolve(), min_devices=min_devices, n_items=num_items,
            catalog=None if catalog is None else catalog.resolve(),
        ))
    except FedrecError as err:
        raise _fail(err) from None
    console.print(f"wrote {path}; submit it with: flwr run {path} SUPERLINK")


def recommend(
    device_dir: Annotated[Path, typer.Option("--device-dir", help="The device's folder (interactions.csv, state.npz).")],
    k: Annotated[int, typer.Option("-k", help="How many items.")] = 10,
    min_history: Annotated[int, typer.Option(help="Below this many positives, recommend popular items.")] = 3,
) -> None:
    """Recommend items on the device, from its own state; nothing is sent."""
    from fedrec.deploy.recommend import recommend as run

    try:
        recs = run(device_dir, k=k, min_history=min_history)
    except FedrecError as err:
        raise _fail(err) from None
    table = Table(title=f"top {len(recs.items)} for this device ({recs.source}: {recs.reason})")
    for column in ("#", "item", "title", "score", "why (your history, the release)"):
        table.add_column(column)
    for rank, rec in enumerate(recs.items, start=1):
        table.add_row(str(rank), str(rec.item_id), rec.title, f"{rec.score:.4g}", rec.reason())
    console.print(table)
