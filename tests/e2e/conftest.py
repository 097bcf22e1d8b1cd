"""End-to-end fixtures: the whole stack as processes (`lastro dev up`), reached over HTTPS only.

The browser is Debian's Chromium driven through chromedriver by Selenium; both are
installed on first use by the dev bootstrap (``lastro dev bootstrap --browser`` does
the same by hand), so a fresh machine or CI needs no manual step.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from lastro.core.config import Settings
from lastro.devstack.bootstrap import CHROMEDRIVER, CHROMIUM, bootstrap_browser
from lastro.devstack.components import components

# A quiet, throwaway browser: no GPU, no sandbox (CI runs as root), nothing phoned home.
# The dev CA is not in Chromium's trust store, so certificate errors are ignored in
# this test browser only; the services' TLS itself is verified by every other test.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",
    "--window-size=1400,1800",
)


@pytest.fixture(scope="session", autouse=True)
def stack_is_up(settings: Settings) -> None:
    down = [c.name for c in components(settings) if not c.healthy()]
    if down:
        pytest.exit(f"dev stack not healthy ({', '.join(down)}): run `lastro dev up`", 2)


@pytest.fixture(scope="session")
def chromium_installed() -> None:
    bootstrap_browser()


@pytest.fixture
def browser(chromium_installed: None, tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def screenshots(settings: Settings) -> Path:
    path = settings.dev_dir / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path
