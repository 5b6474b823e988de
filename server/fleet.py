"""A fleet of real Flower processes on one machine: SuperLink, SuperNodes, ``flwr run``.

Used by the demo (``python -m server.demo``) and by the deployment tests. Every
process is started in its own session and stopped, with its children, on exit; only
processes started here are ever signalled. Each SuperNode gets its own
``FLWR_HOME`` (where it unpacks the apps it runs), as a real device would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from fedrec.errors import FedrecError

logger = logging.getLogger(__name__)

CONNECTION = "fleet"  # name of the SuperLink connection in the CLI's config.toml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peak_rss(pid: int) -> int:
    """VmHWM of a live process in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _descendants(roots: list[int]) -> list[int]:
    """Every live descendant of the processes ``roots`` (Linux /proc, read once; empty
    elsewhere). The SuperLink starts each run's ``flwr-serverapp`` in a session of its
    own, which a signal to the SuperLink's process group does not reach."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalFleet:
    """Owns the processes of one localhost deployment; use it as a context manager."""

    root: Path
    tls: dict[str, Path] | None  # paths from fedrec.deploy.pki.make_tls, or None for plain text
    auth: bool = True
    port: int = field(default_factory=free_port)
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.cli_home = self.root / "cli-home"
        self.cli_home.mkdir(exist_ok=True)
        conn = [f"[superlink]\ndefault = \"{CONNECTION}\"\n", f"[superlink.{CONNECTION}]", f'address = "127.0.0.1:{self.port}"']
        conn.append(f'root-certificates = "{self.tls["ca"]}"' if self.tls else "insecure = true")
        (self.cli_home / "config.toml").write_text("\n".join(conn) + "\n")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _env(self, home: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(FLWR_HOME=str(home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)  # the app code comes from the FAB, nothing else
        return env

    def _spawn(self, name: str, args: list[str], home: Path) -> Proc:
        home.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=self._env(home), cwd=home, start_new_session=True)
        proc = Proc(name=name, popen=popen, log=log)
        self.procs.append(proc)
        return proc

    def start_superlink(self, *, timeout: float = 60.0) -> Proc:
        args = ["flower-superlink", "--host", "127.0.0.1", "--port", str(self.port), "--disable-runtime-dependency-installation"]
        if self.tls:
            args += ["--ssl-certfile", str(self.tls["cert"]), "--ssl-keyfile", str(self.tls["key"]), "--ssl-ca-certfile", str(self.tls["ca"])]
        else:
            args.append("--insecure")
        if self.auth:
            args.append("--enable-supernode-auth")
        proc = self._spawn("superlink", args, self.root / "superlink-home")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise FedrecError(f"the SuperLink exited at start:\n{proc.tail()}")
            if "Uvicorn running" in proc.tail(50):
                return proc
            time.sleep(0.3)
        raise FedrecError(f"the SuperLink did not start within {timeout:.0f} s:\n{proc.tail()}")

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the ``flwr`` CLI against this fleet's SuperLink."""
        env = self._env(self.cli_home)
        return subprocess.run(
            ["flwr", *args], check=False, capture_output=True, text=True, env=env, timeout=timeout, cwd=self.root
        )

    def register(self, public_key: Path) -> None:
        out = self.flwr("supernode", "register", str(public_key), CONNECTION)
        if out.returncode != 0 or "registered successfully" not in out.stdout:
            raise FedrecError(f"could not register {public_key}:\n{out.stdout}\n{out.stderr}")

    def start_supernode(
        self, name: str, *, data_path: Path, private_key: Path | None, tls: bool = True, max_retries: int | None = None,
        node_config: dict[str, float | str] | None = None,
    ) -> Proc:
        """``node_config``: more node-config keys beside ``data-path`` (e.g. ``device-epsilon``)."""
        args = ["flower-supernode", "--superlink", self.address, "--port", str(free_port())]
        if tls and self.tls:
            args += ["--root-certificates", str(self.tls["ca"])]
        else:
            args.append("--insecure")
        if private_key is not None:
            args += ["--auth-supernode-private-key", str(private_key)]
        if max_retries is not None:
            args += ["--max-retries", str(max_retries)]
        extra = "".join(f' {k}="{v}"' if isinstance(v, str) else f" {k}={v}" for k, v in (node_config or {}).items())
        args += ["--node-config", f'data-path="{data_path}"{extra}']
        return self._spawn(name, args, data_path.parent / ".flwr")

    def online_nodes(self) -> int:
        out = self.flwr("supernode", "list", CONNECTION, "--format", "json")
        if out.returncode != 0:
            return 0
        try:
            nodes = json.loads(out.stdout).get("nodes", [])
        except json.JSONDecodeError:
            return 0
        return sum(1 for n in nodes if str(n.get("status", "")).lower() == "online")

    def wait_online(self, count: int, *, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.online_nodes() >= count:
                return
            time.sleep(1.0)
        raise FedrecError(f"fewer than {count} SuperNodes came online within {timeout:.0f} s")

    def submit(self, app_dir: Path) -> str:
        """``flwr run APP fleet``; returns the run id."""
        out = self.flwr("run", str(app_dir), CONNECTION, "--format", "json", timeout=300)
        if out.returncode != 0:
            raise FedrecError(f"flwr run failed:\n{out.stdout}\n{out.stderr}")
        try:
            return str(json.loads(out.stdout)["run-id"])
        except (json.JSONDecodeError, KeyError):
            raise FedrecError(f"unexpected output of flwr run: {out.stdout}") from None

    def wait_for(self, path: Path, *, timeout: float) -> None:
        """Wait until the ServerApp has written ``path``, failing early if the SuperLink dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.is_file():
                return
            if self.procs and not self.procs[0].alive():
                raise FedrecError(f"the SuperLink exited:\n{self.procs[0].tail()}")
            time.sleep(1.0)
        raise FedrecError(f"{path} did not appear within {timeout:.0f} s; SuperLink log:\n{self.procs[0].tail()}")

    def peak_rss(self, name: str) -> int:
        return next((_peak_rss(p.popen.pid) for p in self.procs if p.name == name and p.alive()), 0)

    def close(self) -> None:
        """SIGTERM each process group we started and every descendant (found before the
        parents go, while they still can be: a ServerApp in its own session too), then
        SIGKILL what is left."""
        spawned = _descendants([proc.popen.pid for proc in self.procs])
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
        _signal(spawned, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
        _signal([pid for pid in spawned if Path(f"/proc/{pid}").exists()], signal.SIGKILL)
        self.procs.clear()
