"""A real device's privacy odometer: where it lives and how a job's messages are checked.

The odometer (:mod:`fedrec.privacy.odometer`) is ``privacy_odometer.jsonl`` beside the
device's data file, signed with the device's key when the node config names it
(``device-key``), and kept across restarts of the device process. The owner's budget
is in the node config: ``device-epsilon`` (no odometer without it), ``device-delta``,
``device-accountant``. The server announces each job's signed plan in a ``query.plan``
message before its first request; the device accepts or refuses it and binds the
acceptance to the transport's run id, then answers a job's requests only on a run
whose plan it accepted. Scoring (``fedrec recommend``) releases nothing and never
consults the odometer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedrec.errors import FedrecError
from fedrec.privacy.job_plan import JobPlan, PlanError
from fedrec.privacy.odometer import Decision, Odometer, OdometerSettings

logger = logging.getLogger(__name__)

DEVICE_KEY = "device-key"  # node-config key: the device's private key (signs its odometer)


def device_odometer(node_config: Mapping[str, Any], data_path: str | Path) -> Odometer | None:
    """The device's odometer beside its data, or None when the node config sets no
    ``device-epsilon`` (a device without a budget of its own)."""
    settings = OdometerSettings.from_config(dict(node_config))
    if settings is None:
        return None
    key = node_config.get(DEVICE_KEY)
    return Odometer.beside(Path(str(data_path)).expanduser().parent, settings, key=Path(str(key)) if key else None)


def consider(odometer: Odometer | None, raw_plan: str, *, channel: str) -> Decision:
    """The device's answer to a job's announced plan; an acceptance is bound to ``channel``."""
    try:
        plan = JobPlan.from_json(raw_plan)
    except PlanError as err:
        return Decision(False, f"unreadable plan: {err}", None, None)
    if odometer is None:
        try:
            plan.verify()
        except PlanError as err:
            return Decision(False, str(err), None, None)
        return Decision(True, "this device sets no budget of its own (device-epsilon)", None, None)
    decision = odometer.admit(plan)
    if decision.accepted:
        odometer.took_part(plan.run_id, "plan accepted", channel=channel)
    else:
        logger.warning("privacy odometer: this device refuses job %s: %s", plan.run_id, decision.reason)
    return decision


def require_accepted(odometer: Odometer | None, *, channel: str, release: str) -> None:
    """Raise unless the job on ``channel`` was accepted (no odometer: nothing to check);
    records the release taken part in."""
    if odometer is None:
        return
    run_id = odometer.accepted_on(channel)
    if run_id is None or not odometer.intact:
        raise FedrecError("this device did not accept this job's privacy plan: it takes no part")
    odometer.took_part(run_id, release, channel=channel)
