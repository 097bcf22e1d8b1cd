"""The identity service's Swagger UI, opened in headless Chromium against the running stack.

The page must render the contract from the locally served assets (no CDN) and a
"Try it out" call must reach the live service and show its answer.
"""

from __future__ import annotations

from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from lastro.core.config import Settings

DISCOVERY = "/.well-known/openid-configuration"
EXPECTED_OPERATIONS = ("/oauth/token", "/oauth/authorize", "/.well-known/jwks.json", "/v1/users")
# The answer "Execute" got (not the table of documented responses, nor its header row).
LIVE_STATUS = ".live-responses-table tr.response .response-col_status"
LIVE_BODY = ".live-responses-table tr.response .response-col_description"
OPBLOCK = "./ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' opblock ')]"


def _operation(browser: webdriver.Chrome, path: str) -> WebElement:
    summary = WebDriverWait(browser, 30).until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, f'.opblock-summary-path[data-path="{path}"]'))
    )
    return summary.find_element(By.XPATH, OPBLOCK)


def test_swagger_ui_renders_the_identity_api_and_try_it_out_calls_it(
    browser: webdriver.Chrome, settings: Settings, screenshots: Path
) -> None:
    shot = screenshots / "swagger-identity.png"
    shot.unlink(missing_ok=True)
    try:
        base = settings.service_url("identity")
        browser.get(f"{base}/docs")
        discovery = _operation(browser, DISCOVERY)

        assert "Lastro identity" in browser.find_element(By.CSS_SELECTOR, ".info .title").text
        rendered = {
            element.get_attribute("data-path")
            for element in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
        }
        assert set(EXPECTED_OPERATIONS) <= rendered

        discovery.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
        wait = WebDriverWait(browser, 30)
        wait.until(lambda _: discovery.find_element(By.CSS_SELECTOR, ".try-out__btn")).click()
        wait.until(lambda _: discovery.find_element(By.CSS_SELECTOR, ".btn.execute")).click()
        status = wait.until(lambda _: discovery.find_element(By.CSS_SELECTOR, LIVE_STATUS))
        assert status.text == "200"

        request_url = discovery.find_element(By.CSS_SELECTOR, ".request-url pre").text
        assert request_url == f"{base}{DISCOVERY}"
        body = discovery.find_element(By.CSS_SELECTOR, LIVE_BODY).text
        assert '"issuer"' in body and settings.jwt_issuer in body
        assert '"jwks_uri"' in body
        browser.execute_script("arguments[0].scrollIntoView(true);", discovery)
    finally:  # on failure too: the picture shows what the browser saw
        browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 0
