"""Fixtures for the pipeline's own checks: actionlint and shellcheck, made available once
per session, before any test runs, so no test ever waits on a build.

actionlint is one more Go tool of the lastro tool cache: the same
:func:`~lastro.devstack.kubetools.ensure_go_tool` that builds Helm and kwok builds it
with ``go install`` under ``nice -n 10`` (no prebuilt binary is downloaded) into
``LASTRO_TOOLS_DIR`` (default ``~/.cache/lastro/bin``) as ``actionlint-<version>`` with an
``actionlint`` symlink; a second run finds it and takes no time. shellcheck comes from
Debian's package, installed when missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Final

import pytest

from lastro.core.config import Settings
from lastro.devstack.bootstrap import install
from lastro.devstack.kubetools import GoTool, ensure_go_tool

ACTIONLINT: Final = GoTool("actionlint", "v1.7.12", "github.com/rhysd/actionlint/cmd/actionlint")


@pytest.fixture(scope="session")
def shellcheck() -> Path:
    install([("shellcheck", lambda: shutil.which("shellcheck") is not None, "shellcheck")])
    found = shutil.which("shellcheck")
    assert found is not None, "shellcheck still missing after apt-get install"
    return Path(found)


@pytest.fixture(scope="session")
def actionlint(settings: Settings) -> Path:
    ensure_go_tool(ACTIONLINT, settings.tools_dir, say=lambda _: None)
    return ACTIONLINT.cached(settings.tools_dir)
