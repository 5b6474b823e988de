"""Closing a fleet stops everything it started, also a process that left its session."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from server.fleet import LocalFleet


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds descendants through Linux /proc")
def test_close_stops_a_grandchild_in_a_session_of_its_own(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    # like the SuperLink starting flwr-serverapp: the grandchild calls setsid, so a signal
    # to the child's process group does not reach it
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    fleet = LocalFleet(tmp_path / "fleet", tls=None)
    fleet._spawn("parent", [sys.executable, "-c", script], tmp_path / "home")
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the grandchild did not start"
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    assert os.getsid(grandchild) == grandchild  # its own session
    fleet.close()
    deadline = time.monotonic() + 15
    while Path(f"/proc/{grandchild}").exists() and _state(grandchild) != "Z":
        assert time.monotonic() < deadline, "the grandchild outlived the fleet"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"
