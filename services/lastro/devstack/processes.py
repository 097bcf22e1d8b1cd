"""Start, find and stop the dev stack's own processes through pid files.

A process is ours only if its pid file exists *and* the live process's command
line still mentions the dev directory: a recycled pid is never signalled, and
nothing is ever stopped by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class StartError(RuntimeError):
    """A component did not become healthy; the message says where its log is."""


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def read_pid(pid_file: Path, marker: str) -> int | None:
    """The pid in ``pid_file`` if that process is alive and its command line contains marker."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if marker not in _cmdline(pid):
        return None
    return pid


def spawn(
    argv: Sequence[str],
    *,
    pid_file: Path,
    log_file: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start argv detached (own session), output appended to log_file; writes the pid file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - argv is built by the devstack, not user input
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc


def stop_pid(pid_file: Path, marker: str, timeout: float = 20.0) -> bool:
    """SIGTERM the pid_file process (if ours), wait, then SIGKILL. True if it was running."""
    pid = read_pid(pid_file, marker)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_pid(pid_file, marker) is None:
            break
        _reap(pid)
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    log: Path,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll check() until it is true; raise StartError naming the log otherwise.

    Given ``proc``, the process the caller started, fail at once when it exits.
    """
    deadline = time.monotonic() + timeout
    reason = f"not healthy after {timeout:.0f}s"
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            reason = "exited"
            break
        time.sleep(0.25)
    tail = ""
    if log.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise StartError(f"{what} {reason}; log {log}:\n{tail}")
