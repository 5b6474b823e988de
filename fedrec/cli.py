"""The ``fedrec`` command (Typer + Rich, like Flower's own CLI).

Commands import what they need when they run: ``fedrec audit`` must stay fast for an
auditor (no torch, no pandas), so only Typer, Rich and light modules load here
(tests/privacy/test_accountant_loading.py checks it).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table

from fedrec.deploy.commands import deploy_app, recommend
from fedrec.deploy.odometer_command import odometer
from fedrec.errors import FedrecError
from fedrec.evaluation.metrics import METRIC_NAMES

if TYPE_CHECKING:
    from rich.progress import Progress

    from fedrec.config import RunConfig

app = typer.Typer(help="fedrec: privacy-preserving federated recommendation.", no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Get and check data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(deploy_app, name="deploy")
app.command("recommend")(recommend)
app.command("odometer")(odometer)
console = Console()

# Engines are looked up by name so that the library never imports Flower itself.
ENGINE_GROUP = "fedrec.engines"  # entry points (pyproject.toml): engine name -> run function

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML file of run settings (see simulations/).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a setting: key=value (repeatable).")]
DataOpt = Annotated[Path | None, typer.Option("--data", help="Data directory (default: $FEDREC_DATA_DIR).")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder for results.json and curves.png.")]


@contextmanager
def _errors() -> Iterator[None]:
    """Turn fedrec's errors into one clear line and a non-zero exit code."""
    try:
        yield
    except FedrecError as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(code=2) from None


def _quiet_runtime(record: logging.LogRecord) -> bool:
    """Flower and Ray log every actor at DEBUG (and reset their levels): keep warnings only."""
    return record.levelno >= logging.WARNING or not record.name.startswith(("flwr", "ray"))


def _setup_logging(verbose: bool) -> None:
    # Per-device work is many small models: torch's intra-op threads only add contention
    # (on an oversubscribed machine OpenMP threads spin-wait for busy cores and every step
    # slows down by a large factor; see benchmarks/README.md). The
    # vectorised engine, whose kernels are big, raises it again for itself.
    import torch
    from rich.logging import RichHandler

    torch.set_num_threads(1)
    handler = RichHandler(console=console, show_path=False)
    if not verbose:
        handler.addFilter(_quiet_runtime)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(message)s", handlers=[handler], force=True
    )


def _load_config(config: Path | None, overrides: list[str] | None, data: Path | None) -> RunConfig:
    from fedrec.config import load_config_file, parse_overrides, parse_run_config
    from fedrec.data.location import resolve_data_dir

    values: dict[str, Any] = load_config_file(config) if config else {}
    values.update(parse_overrides(overrides or []))
    if values.get("dataset", "ml-100k") == "ml-100k" or data:
        values["data-dir"] = str(resolve_data_dir(data or values.get("data-dir") or None))
    return parse_run_config(values)


def _data_note(run_config: RunConfig) -> None:
    """Say which columns of the user's file a command takes (read from its first line only)."""
    from fedrec.data.sources import describe

    note = describe(run_config.data)
    if note:
        console.print(f"[dim]data: {note}[/]")


def _progress() -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
    )


def _table(title: str, rows: dict[str, dict[str, Any]]) -> Table:
    table = Table(title=title)
    table.add_column("model")
    for name in METRIC_NAMES:
        table.add_column(name, justify="right")
    for model, values in rows.items():
        table.add_row(model, *(f"{values[m]:.4f}" for m in METRIC_NAMES))
    return table


def _engine(name: str) -> Callable[..., Path]:
    engines = {ep.name: ep for ep in entry_points(group=ENGINE_GROUP)}
    if name not in engines:
        known = ", ".join(sorted(engines)) or "none (reinstall fedrec: pip install -e .)"
        raise FedrecError(f"unknown engine {name!r}; choose one of {known}")
    return engines[name].load()  # type: ignore[no-any-return]


@app.command()
def simulate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    out: OutOpt = Path("runs/simulate"),
    engine: Annotated[
        str, typer.Option(help="inprocess (fast, vectorised) or flower (Flower's simulation runtime, as deployed).")
    ] = "inprocess",
    ray_address: Annotated[
        str, typer.Option(help="flower engine: run on this existing Ray cluster (e.g. auto, or HEAD_IP:6379).")
    ] = "",
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the crashed run in this folder from its last checkpoint (its own config and engine)."),
    ] = None,
    device_epsilon: Annotated[float | None, typer.Option(
        help="Each simulated device's own budget across jobs (its privacy odometer); it refuses a plan beyond it.")] = None,
    device_delta: Annotated[float, typer.Option(help="The simulated devices' delta (with --device-epsilon).")] = 1e-5,
    device_accountant: Annotated[str, typer.Option(help="prv or rdp: how the devices compose (with --device-epsilon).")] = "prv",
    odometers: Annotated[Path | None, typer.Option(
        help="Folder of the simulated devices' odometers, kept across runs so that jobs on one population compose "
        "(with --device-epsilon; default: in memory, this run only).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Federated training on simulated devices (one per user); writes OUT/results.json."""
    from fedrec.config import parse_run_config
    from fedrec.families import family_of

    _setup_logging(verbose)
    with _errors():
        if resume is not None:
            if config or set_ or data:
                raise FedrecError("--resume takes the run's own config; drop --config, --set and --data")
            from fedrec.federation.checkpoint import read_run_config

            flat, engine = read_run_config(resume)
            run_config, out = parse_run_config(flat), resume
        else:
            run_config = _load_config(config, set_, data)
            _data_note(run_config)
        runner = _engine(engine)
        if ray_address and engine != "flower":
            raise FedrecError("--ray-address needs --engine flower (the in-process engine runs in this process)")
        devices = _simulated_odometers(device_epsilon, device_delta, device_accountant, odometers)
        family = family_of(run_config)
        rounds, steps = family.planned_steps(run_config), f"{family.step}s"
        with _progress() as progress:
            task = progress.add_task(f"federated ({engine})", total=rounds, status="resuming" if resume else "starting")

            def on_round(round_: int, info: dict[str, float]) -> None:
                status = f"{int(info['aggregated'])} clients"
                if "train_loss" in info:  # DP-EASE releases have no training loss
                    status = f"loss {info['train_loss']:.3f}, " + status
                if "signal_to_noise" in info:  # user-level DP: what the noise leaves of the signal
                    status += f", clipped {info['clipped_share']:.0%}, signal/noise {info['signal_to_noise']:.2f}"
                if "epsilon" in info:
                    status += f", ε {info['epsilon']:.2f}"
                if "ndcg@10" in info:
                    status += f", val ndcg@10 {info['ndcg@10']:.3f}"
                progress.update(task, completed=round_, status=status)

            options: dict[str, Any] = {"resume": True} if resume is not None else {}
            if ray_address:
                options["ray_address"] = ray_address
            if devices is not None:
                options["odometers"] = devices
            path = runner(run_config, out.resolve(), on_round, **options)
        results = json.loads(path.read_text())
        eps = results.get("epsilon", float("inf"))
        if eps != float("inf"):
            privacy = f"epsilon {eps:.3g}"
        else:  # DP on with noise-multiplier = 0 clips without noise: accounted, epsilon infinite
            privacy = "epsilon inf (clipped, no noise)" if results.get("accountant") else "no DP"
        rows: dict[str, dict[str, Any]] = {f"federated {results['model']}": results}
        references = results.get("references", {})
        rows.update(_reference_rows(references))
        title = f"{results['dataset']}: test metrics after {results.get('rounds', rounds)} {steps}, {privacy}"
        if references:
            title += f" ({', '.join(references)}: no DP, same split)"
        console.print(_table(title, rows))
        from fedrec.privacy.readable import released_lines

        for line in released_lines(results):  # DP-released metrics: clamped, with their noise
            console.print(line, markup=False, soft_wrap=True)
        _print_left_out(results)
        if "popularity" in references:
            console.print(_versus_popularity(results, references["popularity"]["test"]))
        if devices is not None and "devices_refused" in results:
            console.print(f"{results['devices_refused']} of {results['clients']} devices refused the job's plan "
                          f"(their own budget, device-epsilon {device_epsilon:g}): dropouts")
        console.print(
            f"{results['clients']} clients, {results['clients_per_round']:.0f} per {steps[:-1]}, seed {results['seed']}, "
            f"{results['seconds']:.1f} s. Wrote {path} and {path.parent / 'curves.png'}"
        )


def _simulated_odometers(epsilon: float | None, delta: float, accountant: str, folder: Path | None) -> Any:
    """The simulated devices' odometers (None without ``--device-epsilon``)."""
    if epsilon is None:
        if folder is not None:
            raise FedrecError("--odometers needs --device-epsilon (the devices' own budget)")
        return None
    from fedrec.errors import PrivacyError
    from fedrec.privacy.device_odometers import SimulatedOdometers
    from fedrec.privacy.odometer import OdometerSettings

    try:
        settings = OdometerSettings(epsilon=epsilon, delta=delta, accountant=accountant)
    except PrivacyError as err:  # name the options, not the node-config keys
        raise FedrecError(str(err).replace("device-", "--device-", 1)) from None
    return SimulatedOdometers(settings, folder=folder.resolve() if folder is not None else None)


def _reference_rows(references: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Reference test metrics by row name; EASE fitted on part of the catalogue says on how much."""
    rows = {}
    for name, ref in references.items():
        label = f"{name} (top {ref['items_fitted']:,} of {ref['catalogue']:,} items)" if "items_fitted" in ref else name
        rows[label] = ref["test"]
    return rows


def _print_left_out(results: dict[str, Any]) -> None:
    """One line per reference the run left out, with why."""
    for name, why in results.get("left_out", {}).items():
        console.print(f"{name} left out: {why}")


def _versus_popularity(model: dict[str, Any], popularity: dict[str, float]) -> str:
    """The ratio a private model is judged by: it must beat "most popular items". With
    the paired per-user differences (``versus_popularity``, simulations of DP-EASE), a
    difference within two standard errors is called a tie."""
    ratio = model["ndcg@10"] / popularity["ndcg@10"] if popularity["ndcg@10"] > 0 else float("inf")
    full = model["full_ndcg@10"] / popularity["full_ndcg@10"] if popularity["full_ndcg@10"] > 0 else float("inf")
    paired = model.get("versus_popularity")
    if paired is None:
        verdict = "[green]beats[/]" if min(ratio, full) > 1 else "[bold red]does not beat[/]"
        return f"vs popularity: {ratio:.2f}x NDCG@10, {full:.2f}x full NDCG@10: the model {verdict} popularity"
    z = [paired[m]["difference"] / paired[m]["standard_error"] if paired[m]["standard_error"] > 0 else 0.0
         for m in ("ndcg@10", "full_ndcg@10")]
    if min(z) > 2:
        verdict = "[green]beats[/] popularity"
    elif min(z) < -2:
        verdict = "[bold red]is below[/] popularity"
    else:
        verdict = "[yellow]is not clearly better than[/] popularity (within 2 standard errors)"
    diffs = ", ".join(
        f"{paired[m]['difference']:+.4f} +- {paired[m]['standard_error']:.4f}" for m in ("ndcg@10", "full_ndcg@10")
    )
    return (f"vs popularity: {ratio:.2f}x NDCG@10, {full:.2f}x full NDCG@10 (per-user difference {diffs}): "
            f"the model {verdict}")


@app.command()
def centralized(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    out: OutOpt = Path("runs/centralized"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Reference models on the same split: popularity, item-kNN, EASE and a central neural model."""
    _setup_logging(verbose)
    with _errors():
        run_config = _load_config(config, set_, data)
        _data_note(run_config)
        from fedrec.experiments.references import central_max_epochs, run_baselines

        with _progress() as progress:
            name = f"central {run_config.federation.central_model}"
            task = progress.add_task(name, total=central_max_epochs(run_config), status="popularity, item-kNN, EASE")

            def on_epoch(epoch: int, val: dict[str, float]) -> None:
                progress.update(task, completed=epoch, status=f"val ndcg@10 {val['ndcg@10']:.3f}")

            results = run_baselines(run_config, out.resolve(), on_epoch=on_epoch)
            progress.update(task, completed=central_max_epochs(run_config))
        rows = _reference_rows({k: v for k, v in results["references"].items() if k in results["models"]})
        rows.update({name: m for name, m in results["models"].items() if name not in results["references"]})
        console.print(_table(f"{results['dataset']}: test metrics", rows))
        _print_left_out(results)
        console.print(_reference_notes(results["references"]))
        console.print(f"seed {results['seed']}, {results['seconds']:.1f} s. Wrote {out / 'results.json'}")


def _reference_notes(references: dict[str, dict[str, Any]]) -> str:
    """One line: seconds of each reference and what was chosen on validation users."""
    notes = []
    for name, ref in references.items():
        chosen = f", l2 {ref['l2']:g}" if "l2" in ref else f", best epoch {ref['best_epoch']}" if "best_epoch" in ref else ""
        notes.append(f"{name} {ref['seconds']:.1f} s{chosen}")
    return "chosen on validation users; " + "; ".join(notes)


@app.command()
def sweep(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    out: OutOpt = Path("runs/sweep"),
    epsilons: Annotated[str, typer.Option(help="Comma-separated user-level epsilons; inf = no DP.")] = "1,2,4,8,16,inf",
    users: Annotated[str, typer.Option(help="Comma-separated population sizes (0 = all users).")] = "0",
    central: Annotated[Path | None, typer.Option(help="results.json of `fedrec centralized`, drawn as a reference.")] = None,
    engine: Annotated[str, typer.Option(help="flower or inprocess.")] = "inprocess",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Privacy-utility sweep: one auditable run per (epsilon, population); CSV + plot."""
    _setup_logging(verbose)
    with _errors():
        from fedrec.experiments.sweep import run_sweep

        base = _load_config(config, set_, data)
        _data_note(base)
        try:
            eps = [float(e) for e in epsilons.split(",")]
            pops = [int(u) for u in users.split(",")]
        except ValueError:
            raise FedrecError("--epsilons and --users take comma-separated numbers, e.g. 1,2,4,inf and 200,0") from None
        if any(e <= 0 for e in eps) or any(u < 0 for u in pops):
            raise FedrecError("epsilons must be > 0 and populations >= 0")
        central_ndcg = json.loads(central.read_text())["ndcg@10"] if central else None
        runner = _engine(engine)
        with _progress() as progress:
            task = progress.add_task("sweep", total=len(eps) * len(pops), status="")

            def run_point(point: RunConfig, run_dir: Path) -> dict[str, Any]:
                label = f"eps {point.privacy.epsilon if point.privacy.enabled else 'inf'}, users {point.data.max_users or 'all'}"
                progress.update(task, status=label)
                result: dict[str, Any] = json.loads(runner(point, run_dir.resolve(), None).read_text())
                progress.advance(task)
                return result

            rows = run_sweep(base, epsilons=eps, populations=pops, out_dir=out.resolve(), run_point=run_point, central_ndcg=central_ndcg)
        from fedrec.families import family_of

        family = family_of(base)
        table = Table(title=f"privacy-utility sweep of {family.name} (test metrics)")
        for col in ("users", "epsilon target", "epsilon (PRV)", "composed so far", family.noise_label, f"{family.step}s",
                    "hr@10", "ndcg@10", "full_ndcg@10"):
            table.add_column(col, justify="right")
        for r in rows:
            composed = "-" if r["epsilon_population"] is None else f"{r['epsilon_population']:.3g}"
            table.add_row(str(r["users"]), f"{r['epsilon_target']:g}", f"{r['epsilon']:.3g}", composed, f"{r['noise_multiplier']:.3g}",
                          str(r["rounds"]), f"{r['hr@10']:.4f}", f"{r['ndcg@10']:.4f}", f"{r['full_ndcg@10']:.4f}")
        console.print(table)
        console.print(f"Wrote {out / 'sweep.csv'} and {out / 'sweep.png'}")


@app.command()
def plan(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    users: Annotated[int, typer.Option(help="Plan for N users without reading data (public numbers only; needs --items).")] = 0,
    items: Annotated[int, typer.Option(help="Catalogue size, with --users.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Before training: the noise, the signal it must beat and the expected regime (spends no privacy, writes nothing).

    With the data set (the default) the plan reads every user's history: a non-private
    preview for the operator. With --users N --items M it uses public numbers only.
    """
    with _errors():
        from fedrec.config import load_config_file, parse_overrides, parse_run_config
        from fedrec.experiments.plan import plan_run

        if users or items:
            if users < 1 or items < 1:
                raise FedrecError("--users and --items go together, both >= 1 (or drop both to plan on the data set)")
            if data is not None:
                raise FedrecError("--users/--items plan without data; drop --data (or drop --users/--items to read it)")
            values: dict[str, Any] = load_config_file(config) if config else {}
            values.update(parse_overrides(set_ or []))
            result = plan_run(parse_run_config(values), users=users, items=items)
        else:
            from fedrec.federation.device import simulated_population

            run_config = _load_config(config, set_, data)
            if not as_json:
                _data_note(run_config)
            result = plan_run(run_config, split=simulated_population(run_config).split)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    console.print(_plan_tables(result))
    console.print(f"[bold]verdict:[/] {result.verdict}")
    for note in result.notes:
        console.print(f"[dim]- {note}[/]")
    console.print(f"[dim]source: {result.source}. Nothing was released, spent or written.[/]")


def _plan_tables(result: Any) -> Table:
    def num(value: float | None, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}g}"

    eps = "no DP" if not result.dp else f"{result.epsilon:.4f} ({result.accountant}), RDP {result.epsilon_rdp:.4f}"
    target = "no DP" if not result.dp else f"epsilon {result.epsilon_target:g}, delta {result.delta:g}"
    k = (f"{result.top_items:.0f} expected" if result.top_items is not None
         else f"<= {result.top_items_bound} can carry signal (bound)" if result.top_items_bound is not None else "-")
    title = (f"plan: {result.model}, N = {result.population} users, {result.items} items; budget {target}; "
             f"planned epsilon {eps}; top items K: {k}")
    # one column per release, one row per quantity: readable at 80 columns
    table = Table(title=title)
    table.add_column("quantity")
    for r in result.releases:
        table.add_column(r.name, justify="right")
    rows = (
        ("noise multiplier z", lambda r: num(r.noise_multiplier)),
        ("sample rate q", lambda r: num(r.sample_rate)),
        ("steps", lambda r: str(r.steps)),
        ("values d", lambda r: str(r.values)),
        ("noise std zC", lambda r: num(r.noise_std)),
        ("noise norm", lambda r: num(r.noise_norm)),
        ("signal bound nC", lambda r: num(r.signal_bound)),
        ("signal norm", lambda r: num(r.signal_norm)),
        ("noise/signal >= (bound)", lambda r: num(r.noise_to_signal_bound, 3)),
        ("noise/signal", lambda r: num(r.noise_to_signal, 3)),
        ("entry SNR", lambda r: num(r.entry_snr, 3)),
    )
    for label, cell in rows:
        table.add_row(label, *(cell(r) for r in result.releases))
    return table


@app.command()
def tune(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    grid_: Annotated[
        list[str] | None, typer.Option("--grid", "-g", help="A DP-EASE setting and its values: KEY=V1,V2 (repeatable).")
    ] = None,
    eval_share: Annotated[float, typer.Option(help="Part of each try's budget for its validation-metric release.")] = 0.1,
    out: OutOpt = Path("runs/tune"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Choose DP-EASE settings on validation users with every try in the ledger (docs/tuning.md).

    Each combination of the --grid values is released on the population (item counts,
    co-occurrence) and its validation metrics are released with DP too; all of them go
    into one ledger whose epsilon (the --set epsilon budget) covers the whole tuning.
    The chosen try's release is the model: `fedrec audit OUT` verifies it all.
    """
    _setup_logging(verbose)
    with _errors():
        from fedrec.dpease.tune import grid, parse_grid, tune_and_report
        from fedrec.federation.device import simulated_population

        run_config = _load_config(config, [*(set_ or []), "model=dp-ease"], data)
        _data_note(run_config)
        candidates = grid(parse_grid(grid_ or []))
        base = run_config.to_flat()
        with console.status(f"tuning: {len(candidates)} tries, 3 releases each"):
            results = tune_and_report(
                base, simulated_population(run_config).split, candidates, out_dir=out.resolve(), eval_share=eval_share,
            )
    dp = results["epsilon"] != float("inf")
    table = _tune_table(results)
    console.print(table)
    from fedrec.privacy.readable import released_tries_lines

    for line in released_tries_lines(results):  # the noise in each try's released validation metrics
        console.print(line, markup=False, soft_wrap=True)
    rows: dict[str, dict[str, Any]] = {"chosen DP-EASE release": results}
    rows.update(_reference_rows(results["references"]))
    console.print(_table("test metrics of the chosen try (references: no DP, same split)", rows))
    if "popularity" in results["references"]:
        console.print(_versus_popularity(results, results["references"]["popularity"]["test"]))
    if dp:
        console.print(f"epsilon {results['epsilon']:.4f} ({results['accountant']}, RDP {results['epsilon_rdp']:.4f}), "
                      f"delta {results['delta']:g}: {results['releases']} releases in one ledger; check with `fedrec audit {out}`")
    console.print(f"{results['seconds']:.1f} s. Wrote {out / 'results.json'} and {out / 'model.npz'}")


def _tune_table(results: dict[str, Any]) -> Table:
    """One row per try, short headers and a setting per line: readable at 80 columns."""
    from rich import box

    dp = results["epsilon"] != float("inf")
    budget = f"epsilon {results['epsilon']:.4g} for all of them" if dp else "no DP"
    table = Table(title=f"tuning tries ({budget}; validation metrics as released)", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True, show_edge=False, caption=(
                      "*: chosen; settings without their ease- prefix; z: noise multipliers of the counts / Gram / "
                      "validation releases; K: top items; NDCG, full: validation NDCG@10, sampled and full ranking; "
                      "crit.: what the choice maximises; ledger: the try's releases; ε: the try's own epsilon (in "
                      "brackets the population's after it: every try so far, composed by the accountant)"))
    table.add_column("try", justify="right", no_wrap=True)
    table.add_column("settings", overflow="fold", min_width=18)
    table.add_column("z\nε (so far)", justify="right", no_wrap=True)
    for col in ("K", "NDCG", "full", "crit.", "ledger"):
        table.add_column(col, justify="right")
    for t in results["tries"]:
        chosen = "[bold green]*[/]" if t["try"] == results["chosen_try"] else ""
        settings = "\n".join(f"{k.removeprefix('ease-')}={v}" for k, v in t["overrides"].items()) or "defaults"
        releases = list(t["releases"])
        ledger = (f"{releases[0]}-{releases[-1]}" if len(releases) > 2 and releases == list(range(releases[0], releases[-1] + 1))
                  else ",".join(map(str, releases)) or "-")
        noise = "/".join(f"{v:.3g}" for v in t["noise_multipliers"])
        spent = f"ε {t.get('epsilon', math.inf):.3g} ({t.get('epsilon_composed', math.inf):.3g})"
        table.add_row(f"{t['try']}{chosen}", settings, f"{noise}\n{spent}",
                      str(t["top_items"]), f"{t['validation']['ndcg@10']:.4f}", f"{t['validation']['full_ndcg@10']:.4f}",
                      f"{t['criterion']:.4f}", ledger)
    return table


def _write_html(path: Path, page: str) -> None:
    """Write an audit page, or stop with exit 2 and a line saying what to change."""
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as err:
        console.print(f"[bold red]error:[/] cannot write {path}: {err.strerror}; choose another --html path")
        raise typer.Exit(code=2) from None


@app.command()
def audit(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="A run's folder (holds privacy_ledger.jsonl); several, or a folder of run folders: a population audit.")],
    public_keys: Annotated[list[Path] | None, typer.Option(
        "--public-key", help="Trusted copy of the server's public key (PEM); repeat for runs signed by other keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (schema: docs/audit-report.md).")] = False,
    html: Annotated[Path | None, typer.Option("--html", help="Also write the report as one self-contained HTML page.")] = None,
    prv_points: Annotated[int, typer.Option(min=0, help="Rounds (besides the last) at which the JSON/HTML report evaluates PRV.")] = 8,
    delta: Annotated[float | None, typer.Option(help="Population audit: delta of the composed epsilon (default: the runs' smallest).")] = None,
    budget: Annotated[float | None, typer.Option(help="Population audit: the population's epsilon budget (exit 4 above it).")] = None,
) -> None:
    """Verify a run's privacy ledger and recompute its epsilon; with several runs, their composed epsilon per user.

    Exit code 0: verified and within budget; 3 tampered; 4 over budget; 5 malformed.
    """
    from fedrec.privacy.audit import OK, OVER_BUDGET, audit_run
    from fedrec.privacy.population import is_population

    if is_population(run_dirs):
        _audit_population(run_dirs, public_keys or [], as_json=as_json, html=html, delta=delta, budget=budget)
    run_dir = run_dirs[0]
    public_key = _single_key(run_dir, public_keys or [])
    if as_json or html is not None:
        from fedrec.privacy.report import build_document, collect
        from fedrec.privacy.report_html import render_html

        inputs = collect(run_dir, public_key=public_key)
        doc = build_document(inputs, prv_points=prv_points)
        if html is not None:
            _write_html(html, render_html(doc))
        if as_json:
            typer.echo(json.dumps(doc, indent=2))
            raise typer.Exit(code=inputs.audit.code)
        report = inputs.audit
    else:
        report = audit_run(run_dir, public_key=public_key)
    colour = "green" if report.code == 0 else "red"
    table = Table(title=f"privacy audit of {run_dir}", show_header=False)
    table.add_column("check")
    table.add_column("value")
    table.add_row("status", f"[bold {colour}]{report.status}[/]")
    table.add_row("rounds recorded", str(report.rounds))
    table.add_row("other releases recorded", str(report.releases))
    table.add_row("accountant (headline)", report.accountant or "-")
    table.add_row("epsilon recomputed (PRV)", f"{report.epsilon_prv:.4f}")
    table.add_row("epsilon recomputed (RDP)", f"{report.epsilon_rdp:.4f}")
    table.add_row("epsilon recorded", f"{report.recorded_epsilon:.4f}")
    table.add_row("delta", f"{report.delta:.1e}")
    table.add_row("budget", f"{report.budget:.4g}")
    table.add_row("run closed", "yes" if report.closed else "no")
    table.add_row("resumed after a crash", f"{report.resumes} time(s)")
    table.add_row("stopped by budget", "yes" if report.stopped_by_budget else "no")
    console.print(table)
    if report.code in (OK, OVER_BUDGET):  # entries verified: the noise of each metric release, from its signed entry
        from fedrec.privacy.readable import audit_lines

        for line in audit_lines(run_dir):
            console.print(line, markup=False, soft_wrap=True)
    for problem in report.problems:
        console.print(f"[red]problem:[/] {problem}")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if html is not None:
        console.print(f"Wrote {html}")
    raise typer.Exit(code=report.code)


def _single_key(run_dir: Path, keys: list[Path]) -> Path | None:
    from fedrec.privacy.population import trusted_key

    return trusted_key(run_dir, keys)


def _audit_population(
    run_dirs: list[Path], keys: list[Path], *, as_json: bool, html: Path | None, delta: float | None, budget: float | None,
) -> None:
    """`fedrec audit RUN_DIR RUN_DIR ...`: every ledger verified, epsilon composed over all of them."""
    from fedrec.privacy.population import audit_population
    from fedrec.privacy.population_report import print_terminal, render_html

    with _errors():
        doc = audit_population(run_dirs, public_keys=keys, delta=delta, budget=budget).to_json()
    if html is not None:
        _write_html(html, render_html(doc))
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        print_terminal(console, doc)
        if html is not None:
            console.print(f"Wrote {html}")
    raise typer.Exit(code=doc["code"])


@app.command("audit-empirical")
def audit_empirical(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    out: OutOpt = Path("runs/audit-empirical"),
    canaries: Annotated[int, typer.Option(help="Canary users; each joins training with probability 1/2.")] = 200,
    items: Annotated[int, typer.Option(help="Rarely-rated items per canary.")] = 64,
    control: Annotated[
        bool, typer.Option(help="Also audit the same run without DP (in OUT/control): the attack must work there.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the model once with canary users, attack what it releases, bound epsilon from below.

    Writes OUT/empirical_audit.json (and the run's results.json, model.npz, ledger);
    with --control also OUT/control (the run without DP), summarised in the same file.
    """
    _setup_logging(verbose)
    with _errors():
        from fedrec.families import family_of
        from fedrec.privacy.canaries import AuditSettings, check_auditable

        run_config = _load_config(config, set_, data)
        check_auditable(run_config)
        _data_note(run_config)
        family = family_of(run_config)
        with _progress() as progress:
            task = progress.add_task("training with canaries", total=family.planned_steps(run_config), status="")

            def on_round(round_: int, info: dict[str, float]) -> None:
                status = f"loss {info['train_loss']:.3f}" if "train_loss" in info else f"{int(info['aggregated'])} clients"
                progress.update(task, completed=round_, status=status)

            settings = AuditSettings(canaries=canaries, items_per_canary=items)
            report = family.empirical_audit(run_config, out_dir=out.resolve(), settings=settings, on_step=on_round)
        if control and report["dp"]:
            from fedrec.privacy.canaries import attach_control

            without = _load_config(config, [*(set_ or []), "dp=off"], data)
            with console.status("the same audit without DP (control)"):
                checked = family.empirical_audit(without, out_dir=out.resolve() / "control", settings=settings, on_step=None)
            report = attach_control(out.resolve(), report, checked)
    table = Table(title=f"empirical privacy audit ({'DP' if report['dp'] else 'no DP'})", show_header=False)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("accountant epsilon (upper bound)", f"{report['accountant_epsilon']:.3f}")
    table.add_row("delta", f"{report['delta']:.1e}")
    table.add_row("one-run epsilon lower bound (95%)", f"[bold]{report['one_run_epsilon_lower_bound']:.3f}[/]")
    table.add_row("Clopper-Pearson epsilon lower bound (95%)", f"{report['cp_epsilon_lower_bound']:.3f}")
    table.add_row("canaries (members)", f"{report['canaries']} ({report['members']})")
    table.add_row("guesses / correct", f"{report['guesses']} / {report['correct']}")
    table.add_row("attack AUC", f"{report['auc']:.3f}")
    if "control" in report:
        ctl = report["control"]
        table.add_row("control without DP: one-run lower bound", f"{ctl['one_run_epsilon_lower_bound']:.3f}")
        table.add_row("control without DP: guesses / correct, AUC", f"{ctl['guesses']} / {ctl['correct']}, {ctl['auc']:.3f}")
    console.print(table)
    console.print(f"{report['rounds']} {family.step}s, {report['seconds']:.0f} s. Wrote {out / 'empirical_audit.json'}")


@app.command("coldstart-eval")
def coldstart_eval(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    out: OutOpt = Path("runs/coldstart"),
    text: Annotated[str, typer.Option(help="Comma-separated text encoders: tfidf, minilm.")] = "tfidf,minilm",
    reveal: Annotated[str, typer.Option(help="Comma-separated numbers of revealed items.")] = "0,1,3,5",
    federated: Annotated[bool, typer.Option(help="Train a federated reference on the training users.")] = True,
    first_rounds: Annotated[int, typer.Option(help="Local rounds for the random vs profile init study (0: skip).")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the held-out users, negatives and tie-breaks.")] = 0,
    collaborative: Annotated[
        str, typer.Option(help="auto (dp-ease when model = dp-ease, the default), none, or dp-ease: add the DP-EASE "
                               "release of the training users (own ledger in OUT/dp-ease).")
    ] = "auto",
    epsilon: Annotated[float, typer.Option(help="Budget of the --collaborative dp-ease release (user-level).")] = 8.0,
    delta: Annotated[float, typer.Option(help="Delta of the --collaborative dp-ease release.")] = 1e-5,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Cold start on held-out users who never train: popularity, content, blend, federated; CSV + plot.

    The federated model is the run's (--config/--set). With model = dp-ease (the default)
    the training users run DP-EASE (its ledger passes `fedrec audit OUT/dp-ease`) and new
    users are scored from its released arrays (docs/coldstart-dp.md). With model = neumf
    or gmf a neural reference is trained over the training users (default: 20 rounds, 50
    clients per round, no DP); --collaborative dp-ease adds the DP-EASE release to it.
    """
    _setup_logging(verbose)
    with _errors():
        from fedrec.config import DPMode, load_config_file, parse_overrides, parse_run_config
        from fedrec.data.location import resolve_data_dir
        from fedrec.data.sources import load_dataset
        from fedrec.experiments.coldstart import CSV_NAME, PLOT_NAME, ColdStartConfig, Collaborative, run_coldstart_eval
        from fedrec.families import family_of

        values: dict[str, Any] = {"num-rounds": 20, "clients-per-round": 50, "eval-every": 0, "dp": DPMode.OFF, "seed": seed}
        values.update(load_config_file(config) if config else {})
        values.update(parse_overrides(set_ or []))
        if values.get("dataset", "ml-100k") == "ml-100k" or data:
            values["data-dir"] = str(resolve_data_dir(data or values.get("data-dir") or None))
        run_config = parse_run_config(values)
        try:
            reveal_n = tuple(int(n) for n in reveal.split(","))
        except ValueError:
            raise FedrecError("--reveal takes comma-separated integers, e.g. 0,1,3,5") from None
        if any(n < 0 for n in reveal_n):
            raise FedrecError("--reveal values must be >= 0")
        family = family_of(run_config)
        releases = {c.value for c in Collaborative} - {Collaborative.NONE.value}  # the releases cold start evaluates
        if collaborative == "auto":  # the run's own release where cold start evaluates it
            collaborative = family.name if family.name in releases else Collaborative.NONE.value
        if not family.neural and federated:
            # the federated reference is a neural model: this family is evaluated through its release instead
            federated = False
            if collaborative == Collaborative.NONE.value:
                raise FedrecError(f"model = {family.name} is evaluated through its release (--collaborative "
                                  f"{'/'.join(sorted(releases))}): "
                                  "with --collaborative none add --no-federated, or --set model=neumf for the neural reference")
        settings = ColdStartConfig(
            reveal=reveal_n, text_encoders=tuple(t.strip() for t in text.split(",")), federated=federated,
            first_rounds=first_rounds, seed=seed, collaborative=cast(Collaborative, collaborative), release_epsilon=epsilon, release_delta=delta,
        )
        _data_note(run_config)
        interactions = load_dataset(run_config.data).positives(run_config.data.rating_threshold)
        with console.status("cold start") as status:
            results = run_coldstart_eval(
                interactions, out_dir=out.resolve(), config=settings, federated_config=run_config,
                on_step=lambda step: status.update(step),
            )
        table = Table(title=f"cold start: {results['users']['test']} held-out users (seed {seed})")
        for col in ("method", "n", "hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10"):
            table.add_column(col, justify="right")
        for r in results["rows"]:
            table.add_row(r["method"], str(r["reveal"]), *(f"{r[m]:.4f}" for m in ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10")))
        console.print(table)
        for encoder, t in results["targets"].items():
            if "n3_relative_gain" not in t:
                continue
            console.print(
                f"blend ({encoder}) vs popularity, full NDCG@10: n=3 {t['n3_relative_gain']:+.1%} (target +20%), "
                f"n=0 {t['n0_blend']:.4f} vs {t['n0_popularity']:.4f}"
            )
        release = results["release"]
        for method, t in results["targets"].items():
            if "ratio_to_popularity" in t:
                ratios = ", ".join(f"n={n} {r:.2f}x" for n, r in t["ratio_to_popularity"].items())
                console.print(f"{method} (epsilon {release['epsilon']:.3g}) / popularity, full NDCG@10: {ratios} (target 1.15x at n=3)")
        for row in results["signup"]:
            if row["answers"] == "genres + likes" or row["reveal"] == max(reveal_n):
                console.print(
                    f"{row['method']}, n={row['reveal']}: full NDCG@10 {row['full_ndcg@10']:.4f}, minus popularity's "
                    f"{row['diff_vs_popularity']:+.4f} ± {row['diff_se']:.4f} (paired, SE)"
                )
        for row in results["first_rounds"]:
            if row["round"] in (0, settings.first_rounds):
                console.print(
                    f"joining cold user, n={row['reveal']}, {row['init']} init, after {row['round']} local rounds: "
                    f"full NDCG@10 {row['full_ndcg@10']:.4f}"
                )
        console.print(f"{results['seconds']:.0f} s. Wrote {out / CSV_NAME}, {out / PLOT_NAME} and {out / 'results.json'}")


@app.command("serve-fallback")
def serve_fallback(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    dataset: Annotated[
        str | None, typer.Option(help="ml-100k or an interactions file (its item file: --set item-file=PATH).")
    ] = None,
    text: Annotated[str, typer.Option(help="Title encoder: tfidf (light) or minilm.")] = "tfidf",
    run_dir: Annotated[Path, typer.Option(help="Folder for the item-vector cache.")] = Path("runs/fallback"),
    tuned: Annotated[Path | None, typer.Option(help="results.json of coldstart-eval: use its tuned weights.")] = None,
    calibration_weight: Annotated[
        float, typer.Option(help="How closely the list follows stated preferences, 0-1 (ignored with --tuned).")
    ] = 0.7,
    smoothing: Annotated[float, typer.Option(help="Demographic smoothing (ignored with --tuned).")] = 5000.0,
    release: Annotated[
        Path | None, typer.Option(help="A DP-EASE run folder: its released item-item weights join the liked-item similarity.")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve the cold-start fallback over HTTP: POST /recommend, GET /health.

    The catalogue comes from the data section (--config/--set, as for simulate): the
    item file gives titles, genres and text; ids are the data set's own.
    """
    _setup_logging(verbose)
    with _errors():
        from fedrec.data.sources import load_dataset
        from fedrec.fallback import FeatureConfig, build_catalog
        from fedrec.fallback.preferences import PreferenceConfig, PreferenceRecommender
        from fedrec.fallback.service import create_app, serve

        preferences = PreferenceConfig(calibration_weight=calibration_weight, smoothing=smoothing)
        if tuned is not None:
            chosen = json.loads(tuned.read_text())["tuned"].get(text, {}).get("preferences")
            if chosen is None:
                raise FedrecError(f"{tuned} has no tuned preference weights for text encoder {text!r}; "
                                  f"run coldstart-eval with --text {text}")
            preferences = PreferenceConfig.from_dict(chosen)
        run_config = _load_config(config, [*(set_ or []), *([f"dataset={dataset}"] if dataset else [])], data)
        _data_note(run_config)
        loaded = load_dataset(run_config.data).positives(run_config.data.rating_threshold)
        catalog = build_catalog(loaded, features=FeatureConfig(text=text), run_dir=run_dir.resolve())
        console.print(f"serving {catalog.n_items} items on http://{host}:{port} (POST /recommend, GET /health)")
        texts = loaded.item_meta.texts if loaded.item_meta is not None else None
        released = None
        if release is not None:
            from fedrec.fallback.collaborative import ReleasedEase

            released = ReleasedEase.from_run(release.resolve())
            if preferences.release_ridge > 0:  # re-solved for short histories, as coldstart-eval tuned it
                from fedrec.fallback.dp_coldstart import run_content_target

                target = run_content_target(release.resolve(), released.top_items)
                released = released.refit(preferences.release_ridge, target=target)
        recommender = PreferenceRecommender(catalog, preferences, release=released, texts=texts)
        serve(create_app(catalog, recommender), host=host, port=port)


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="Data set to download (ml-100k).")] = "ml-100k",
    data: DataOpt = None,
) -> None:
    """Download a public data set from its source (checksum-checked)."""
    with _errors():
        from fedrec.data.fetch import fetch_ml100k

        if name != "ml-100k":
            raise FedrecError(f"unknown data set {name!r}; fedrec can fetch ml-100k")
        target = data or Path(".") / "data"
        path = fetch_ml100k(target.resolve())
        console.print(f"MovieLens 100K is in {path}; now export FEDREC_DATA_DIR={target.resolve()}")


@data_app.command("check", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def data_check(
    ctx: typer.Context,
    dataset: Annotated[
        str | None, typer.Argument(help="ml-100k or an interactions file (CSV, TSV or Parquet); default: the config's.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
) -> None:
    """Load and validate a data set; say which columns were taken and print its size.

    Every key of the data section is also a flag here: --user-col COLUMN (a header name
    or a position from 1), --item-col, --rating-col, --time-col, --delimiter, --header,
    --data-preset, --id-type, --duplicates, --split, --rating-scale, --rating-threshold,
    --encoding, --item-file, --item-id-col, --title-col, --genres-col, --text-col,
    --year-col, --genre-sep (docs/data.md).
    """
    with _errors():
        from fedrec.data.sources import load_dataset, positives_note
        from fedrec.data.split import resolve_split, split_note

        flags = _data_flags(list(ctx.args))
        values = [*(set_ or []), *([f"dataset={dataset}"] if dataset else []), *(f"{k}={v}" for k, v in flags.items())]
        run_config = _load_config(config, values, data)
        d = run_config.data
        started = time.perf_counter()
        loaded = load_dataset(d)
        seconds = time.perf_counter() - started
        if loaded.extra.get("note"):
            console.print(f"[dim]{loaded.extra['note']}[/]")
        console.print(
            f"{loaded.name}: {len(loaded)} interactions, {loaded.n_users} users, {loaded.n_items} items "
            f"(checked in {seconds:.2f} s)"
        )
        rated = loaded.extra.get("rated", "1") == "1"
        console.print(positives_note(loaded, d.rating_threshold, rated=rated))
        console.print(split_note(resolve_split(d.split, loaded)))
        if loaded.item_meta is not None:
            titled = sum(1 for t in loaded.item_meta.titles if t)
            console.print(f"item content: {titled} titles, {len(loaded.item_meta.genre_names)} genres")


def _data_flags(args: list[str]) -> dict[str, str]:
    """``--user-col userId`` / ``--user-col=userId`` for every key of the data section."""
    from fedrec.config import data_keys

    keys = data_keys()
    out: dict[str, str] = {}
    k = 0
    while k < len(args):
        arg = args[k]
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name not in keys:
            raise FedrecError(f"unknown option {arg!r}; the data flags are --{', --'.join(sorted(keys))}")
        if not eq:
            if k + 1 >= len(args):
                raise FedrecError(f"--{name} needs a value")
            k += 1
            value = args[k]
        out[name] = value
        k += 1
    return out


def main() -> None:
    app()
