"""What every component of the local stack is: a :class:`Component` that starts itself
under ``.dev/<name>``, says whether it is healthy and stops only what it started; and
the small helpers the components share (port probes, setup commands, secret files)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lastro.core.config import Settings
from lastro.devstack.processes import StartError, read_pid, stop_pid


@dataclass(frozen=True)
class Status:
    name: str
    healthy: bool
    address: str
    pid: int | None
    detail: str = ""


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def run_setup(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a setup command; a failure raises StartError with the command's own output."""
    result: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]  # noqa: S603
        argv, check=False, text=True, capture_output=True, **kwargs
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-2000:]
        raise StartError(f"`{' '.join(argv[:4])} ...` exited {result.returncode}:\n{output}")
    return result


def secret_file(path: Path, make: str) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(make)
    return path.read_text().strip()


class Component:
    name: str = ""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.dev_dir / self.name
        self.log = settings.dev_dir / "logs" / f"{self.name}.log"
        self.pid_file = settings.dev_dir / "run" / f"{self.name}.pid"

    @property
    def marker(self) -> str:
        return str(self.settings.dev_dir)

    def healthy(self) -> bool:
        raise NotImplementedError

    def address(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> bool:
        return stop_pid(self.pid_file, self.marker)

    def pid(self) -> int | None:
        return read_pid(self.pid_file, self.marker)

    def status(self) -> Status:
        return Status(self.name, self.healthy(), self.address(), self.pid())

    def up(self) -> str:
        if self.healthy():
            return "already running"
        self.start()
        return "started"


def https_ok(settings: Settings, url: str) -> bool:
    if not settings.ca_file.exists():
        return False
    ctx = ssl.create_default_context(cafile=str(settings.ca_file))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except OSError:
        return False
