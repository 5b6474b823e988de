"""The ServerApp for Flower's deployment runtime (SuperLink + real SuperNodes).

Unlike the simulation app, the server holds no interactions: the catalogue size, the
public catalogue (``catalog.json`` of ``fedrec deploy split``: item ids, titles,
content) and the number of devices to wait for come from the run config
(``num-items``, ``catalog``, ``min-devices``). Results and the privacy ledger go to
``out-dir`` on the machine that runs the ServerApp.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrec.config import parse_run_config
from fedrec.deploy.settings import deploy_catalog, split_deploy_settings
from fedrec.experiments.results import RESULTS, write_json
from fedrec.experiments.run import run_family
from fedrec.privacy.device_odometers import NoContributor
from server.app import split_out_dir
from server.channels import GridChannels

logger = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    values, out_dir, resume = split_out_dir(context.run_config)
    values, deploy = split_deploy_settings(values)
    config = parse_run_config(values)
    # real devices: their evaluation metrics leave only through a DP release in the ledger
    common = {
        "expected_nodes": deploy.min_devices, "timeout": deploy.round_timeout, "patience": deploy.connect_timeout,
        "private_evaluation": config.privacy.enabled,
    }
    channels = GridChannels(
        grid, config, n_items=deploy.n_items, simulated=False, catalog=deploy_catalog(deploy),
        secure_context=context if deploy.secure_aggregation else None, **common,  # type: ignore[arg-type]
    )
    try:
        results = run_family(config, channels, out_dir=out_dir, engine="flower-deployment", resume=resume)
    except NoContributor as err:  # every device's own budget refused the job's plan (run_family wrote why)
        logger.error("%s", err)
        raise
    transport = channels.opened
    assert transport is not None  # the family opened its channel
    per_device = [u["bytes_per_device"] for u in transport.uploads]
    results["secure_aggregation"] = deploy.secure_aggregation
    results["upload"] = {
        "bytes_per_device_per_round": per_device,
        "mean_bytes_per_device": sum(per_device) / len(per_device) if per_device else 0.0,
        "rounds": transport.uploads,
        "contents": transport.upload_contents,
    }
    write_json(out_dir / RESULTS, results)
    logger.info("deployment run finished: results in %s", out_dir / RESULTS)
