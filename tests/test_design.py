"""House rule 1: the library never imports Flower."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "fedrec"


def test_no_flower_import_in_library_source() -> None:
    pattern = re.compile(r"^\s*(import|from)\s+flwr\b", re.MULTILINE)
    offenders = [str(p) for p in LIB.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_importing_every_library_module_does_not_load_flower() -> None:
    # every module but __main__, which runs the CLI when imported
    modules = [".".join(p.relative_to(LIB.parent).with_suffix("").parts) for p in LIB.rglob("*.py") if p.stem != "__main__"]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('flwr' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
