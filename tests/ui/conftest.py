"""Fixtures of the dashboard tests: a real embedded ``coscope serve`` (API + worker, SQLite), keys of two
teams, and Debian's chromium driven headless through chromium-driver (selenium)."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from coscope.harness import SLOWNESS, Stack
from tests.service.conftest import Api

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_SECONDS = 30 * SLOWNESS  # page updates: fetches and SSE frames on a loaded 2-core machine
CSP_WORDS = "Content Security Policy"  # how chromium logs a blocked script, style or connection


@pytest.fixture(scope="module")
def stack(embedded_server) -> Stack:
    return embedded_server[0]


@pytest.fixture(scope="module")
def admin_key(embedded_server) -> str:
    return embedded_server[1]


def create_key(stack: Stack, *args: str) -> str:
    result = stack.coscope("keys", "create", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def member_key(stack: Stack) -> str:
    return create_key(stack, "--name", "ui-member", "--team", "lab")


@pytest.fixture(scope="module")
def api(stack: Stack, member_key: str) -> Api:
    return Api(stack.url, member_key)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless chromium for the module (starting one costs seconds); each test signs in afresh."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:  # .ci/run installs them and sets COSCOPE_REQUIRE_BROWSER: in CI a missing browser fails
        message = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver (.ci/run does)"
        if os.environ.get("COSCOPE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                     "--disable-gpu", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60 * SLOWNESS)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser, stack: Stack) -> Iterator[object]:
    """The browser, signed out, at 1280 px; after the test: no Content-Security-Policy violation logged."""
    browser.set_window_size(1280, 1000)
    browser.get(f"{stack.url}/ui/static/favicon.svg")  # same origin, no script that could navigate away
    browser.execute_script("sessionStorage.clear()")
    browser.get_log("browser")  # drop what earlier tests logged
    yield browser
    violations = [entry["message"] for entry in browser.get_log("browser") if CSP_WORDS in entry["message"]]
    assert not violations, violations


def non_blank_share(png: bytes) -> float:
    """The share of an element screenshot's pixels that differ from its most common colour (the background):
    near 0 for an empty chart or a missing image."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=image.width * image.height)
    background = max(colours)[0]
    return 1 - background / (image.width * image.height)
