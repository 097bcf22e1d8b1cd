"""Fixtures for the pipeline's own checks: actionlint and shellcheck, made available once
per session, before any test runs, so no test ever waits on a build.

actionlint is built with ``go install`` (no prebuilt binary is downloaded) into the lastro
tool cache (``LASTRO_TOOLS_DIR``, default ``~/.cache/lastro/bin``) as
``actionlint-<version>`` with an ``actionlint`` symlink, under ``nice -n 10``; a second run
finds it and takes no time. shellcheck comes from Debian's package, installed when missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

import pytest

from lastro.devstack.bootstrap import install

PACKAGE: Final = "github.com/rhysd/actionlint/cmd/actionlint"
VERSION: Final = "v1.7.12"


def tools_dir() -> Path:
    return Path(os.environ.get("LASTRO_TOOLS_DIR", Path.home() / ".cache" / "lastro" / "bin"))


def ensure_actionlint(into: Path) -> Path:
    """The cached actionlint build, built first when this version is not there yet."""
    target = into / f"actionlint-{VERSION}"
    if not target.exists():
        go = shutil.which("go")
        if go is None:
            raise RuntimeError("the Go toolchain is needed to build actionlint (no `go`)")
        into.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=into, prefix=".actionlint-") as scratch:
            result = subprocess.run(
                ["nice", "-n", "10", go, "install", "-trimpath", f"{PACKAGE}@{VERSION}"],
                check=False,
                capture_output=True,
                text=True,
                env={**os.environ, "GOBIN": scratch},
            )
            if result.returncode != 0:
                tail = (result.stdout + result.stderr).strip()[-3000:]
                raise RuntimeError(f"building actionlint {VERSION} failed:\n{tail}")
            (Path(scratch) / "actionlint").rename(target)  # atomic: never half-written
    link = into / "actionlint"
    if not link.is_symlink() or os.readlink(link) != target.name:
        link.unlink(missing_ok=True)
        link.symlink_to(target.name)
    return target


@pytest.fixture(scope="session")
def shellcheck() -> Path:
    install([("shellcheck", lambda: shutil.which("shellcheck") is not None, "shellcheck")])
    found = shutil.which("shellcheck")
    assert found is not None, "shellcheck still missing after apt-get install"
    return Path(found)


@pytest.fixture(scope="session")
def actionlint() -> Path:
    return ensure_actionlint(tools_dir())
