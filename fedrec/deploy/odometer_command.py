"""``fedrec odometer``: the device owner's view of its privacy odometer, and its repair."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def odometer(
    device_dir: Annotated[Path, typer.Option("--device-dir", help="The device's folder (its data and privacy_odometer.jsonl).")],
    device_epsilon: Annotated[float, typer.Option(help="The device's budget, as in its node config (device-epsilon).")],
    device_delta: Annotated[float, typer.Option(help="device-delta, as in its node config.")] = 1e-5,
    device_accountant: Annotated[str, typer.Option(help="device-accountant: prv or rdp.")] = "prv",
    key: Annotated[Path | None, typer.Option(help="The device's private key (device-key), if its record is signed.")] = None,
    repair: Annotated[str | None, typer.Option(help="Rebuild a damaged record from the servers' signed plans, with this note.")] = None,
    reset: Annotated[str | None, typer.Option(help="Start the record again (nothing kept), with this note.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show the device's privacy odometer (epsilon spent of its own budget, jobs, refusals,
    resets); with --repair or --reset, the owner mends a damaged record. Exit 0 intact, 3 damaged."""
    from fedrec.errors import FedrecError
    from fedrec.privacy.odometer import ODOMETER, Odometer, OdometerSettings

    if repair is not None and reset is not None:
        console.print("[bold red]error:[/] give --repair or --reset, not both")
        raise typer.Exit(code=2)
    try:
        settings = OdometerSettings(epsilon=device_epsilon, delta=device_delta, accountant=device_accountant)
        if not (device_dir / ODOMETER).exists() and not (repair or reset):
            raise FedrecError(f"{device_dir / ODOMETER}: no odometer here yet (the device has not been offered a job)")
        record = Odometer.beside(device_dir, settings, key=key)
        if repair is not None:
            kept, dropped = record.repair(repair)
            console.print(f"repaired: {kept} job(s) kept, {dropped} dropped (their plans' signatures no longer verify)")
        elif reset is not None:
            record.reset(reset)
            console.print("reset: the record starts again; the damaged one is kept beside it")
    except FedrecError as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(code=2) from None
    status = record.status()
    if as_json:
        typer.echo(json.dumps(status, indent=2))
    else:
        table = Table(title=f"privacy odometer of {device_dir}", show_header=False)
        table.add_column("")
        table.add_column("")
        table.add_row("record", "[green]intact[/]" if status["intact"] else "[bold red]damaged: refuses every job[/]")
        spent = status["epsilon"]
        table.add_row("epsilon spent", "-" if spent is None else f"{spent:.4f} of {device_epsilon:g} "
                      f"({device_accountant}, delta {device_delta:g})")
        table.add_row("jobs taken part in", str(len(status["jobs"])))
        table.add_row("jobs refused", str(len(status["refused"])))
        console.print(table)
        for problem in status["problems"]:
            console.print(f"[red]problem:[/] {problem}")
        for note in status["resets"]:
            console.print(f"[yellow]reset by the owner:[/] {note['note']} ({note['kept_jobs']} job(s) kept, "
                          f"{note['dropped_jobs']} dropped)")
    raise typer.Exit(code=0 if status["intact"] else 3)
