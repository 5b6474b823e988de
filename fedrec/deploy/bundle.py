"""Write the Flower app folder that ``flwr run`` turns into the FAB for a deployment.

The repository's own ``pyproject.toml`` describes the *simulation* app (its
``[tool.flwr.federations]`` also makes ``flwr`` 1.41 migrate and rewrite it). A
deployment submits a separate folder: a copy of ``fedrec/``, ``clients/`` and
``server/`` and a ``pyproject.toml`` whose components are the deployment apps and
whose run config lists every key (``flwr run --run-config`` may only override keys
listed there).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fedrec
from fedrec.config import RunConfig
from fedrec.deploy import settings
from fedrec.errors import FedrecError

PACKAGES = ("fedrec", "clients", "server")
DEPENDENCIES = ("torch==2.13.0", "numpy>=1.26", "opacus>=1.5,<1.7", "cryptography>=42", "pyarrow>=15", "pandas>=2.1")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def app_config(
    config: RunConfig, *, out_dir: Path, min_devices: int, n_items: int, round_timeout: float = 300.0,
    secure_aggregation: bool = False, catalog: Path | None = None,
) -> dict[str, Any]:
    """The flat run config of a deployment: fedrec's keys plus the server's deployment keys
    (``catalog``: the public catalog.json on the server machine, the item content of the fit)."""
    return {
        **config.to_flat(),
        "out-dir": str(out_dir),
        "resume": False,  # flwr run --run-config 'resume=true' continues a crashed run from its checkpoint
        settings.MIN_DEVICES: min_devices,
        settings.NUM_ITEMS: n_items,
        settings.ROUND_TIMEOUT: round_timeout,
        settings.CONNECT_TIMEOUT: 300.0,
        settings.SECURE_AGGREGATION: secure_aggregation,
        settings.CATALOG: "" if catalog is None else str(catalog),
    }


def write_app(out_dir: Path, run_config: Mapping[str, Any], *, source_root: Path | None = None) -> Path:
    """Create ``out_dir`` with the app's code and its ``pyproject.toml``; return it."""
    root = source_root or Path(fedrec.__file__).resolve().parent.parent
    missing = [p for p in PACKAGES if not (root / p / "__init__.py").is_file()]
    if missing:
        raise FedrecError(f"cannot find the packages {', '.join(missing)} under {root}; run from a fedrec checkout")
    out_dir.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        shutil.rmtree(out_dir / package, ignore_errors=True)
        shutil.copytree(root / package, out_dir / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    lines = [
        "[build-system]", 'requires = ["setuptools>=69"]', 'build-backend = "setuptools.build_meta"', "",
        "[project]", 'name = "fedrec-device"', 'version = "0.1.0"',
        "dependencies = [" + ", ".join(f'"{d}"' for d in DEPENDENCIES) + "]", "",
        "[tool.setuptools.packages.find]", 'include = ["fedrec*", "clients*", "server*"]', "",
        "[tool.flwr.app]", 'publisher = "fedrec"', "",
        "[tool.flwr.app.components]", 'serverapp = "server.deploy:app"', 'clientapp = "clients.device:app"', "",
        "[tool.flwr.app.config]",
        *(f"{key} = {_toml_value(value)}" for key, value in run_config.items()),
    ]
    (out_dir / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return out_dir
