"""Screenshots of the dashboard's job and sweep pages for the README (docs/dashboard-*.png), taken in headless
chromium from a running coscope server:

    .venv/bin/python scripts/dashboard_screenshots.py --server http://127.0.0.1:8000 --key "$KEY" \\
        --job JOB_ID --sweep SWEEP_ID --out docs

Needs Debian's chromium and chromium-driver and the test extra (selenium).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

WIDTH = 1280


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
                     f"--window-size={WIDTH},1000"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def capture(driver: webdriver.Chrome, path: Path, height: int | None) -> None:
    """The page from its top, ``height`` px tall (default: all of it)."""
    full = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, min(full, height) if height else full)
    time.sleep(0.5)  # re-layout at the new size
    driver.save_screenshot(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--job", required=True, help="a finished job's id")
    parser.add_argument("--sweep", required=True, help="a sweep's id")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--height", type=int, default=1500, help="crop height in px (0: the whole page)")
    args = parser.parse_args()
    driver = browser()
    wait = WebDriverWait(driver, 60)
    try:
        driver.get(f"{args.server}/ui/static/favicon.svg")  # same origin: put the key in this tab's storage
        driver.execute_script("sessionStorage.setItem('coscope.apiKey', arguments[0])", args.key)
        driver.get(f"{args.server}/ui/jobs/{args.job}")
        curves = driver.find_element(By.CSS_SELECTOR, "[data-testid=curves]")
        wait.until(lambda d: int(curves.get_attribute("data-points")))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#artifacts button"))
        capture(driver, args.out / "dashboard-job.png", args.height or None)
        driver.set_window_size(WIDTH, 1000)
        driver.get(f"{args.server}/ui/sweeps/{args.sweep}")
        wait.until(lambda d: d.execute_script(
            "return document.querySelector('[data-testid=heatmap]').naturalWidth") > 0)
        capture(driver, args.out / "dashboard-sweep.png", args.height or None)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
