"""Headless Chromium driven by Selenium, for the report page's browser test and benchmark.

Debian's ``chromium`` and ``chromium-driver`` (``.ci/docs`` installs them); nothing is downloaded:
Selenium Manager is kept offline and both paths are given. :func:`unavailable` says why a browser
cannot run here, or None.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1300,1000")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _paths() -> tuple[str | None, str | None]:
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    return browser, shutil.which("chromedriver")


def unavailable() -> str | None:
    """Why no browser can be driven here (one line naming the fix), or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]' (or '.[docs]')"
    browser, driver = _paths()
    if browser is None or driver is None:
        return ("no Chromium here: apt-get install -y chromium chromium-driver (what .ci/docs does; "
                f"found browser={browser}, chromedriver={driver})")
    return None


def start() -> Any:
    """A fresh headless Chromium (a selenium WebDriver) that keeps the page's console messages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never fetch a browser
    browser, driver = _paths()
    assert browser and driver, unavailable()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def console_errors(driver: Any) -> list[str]:
    """The console's SEVERE messages since the last call (script errors, blocked fetches)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def open_page(driver: Any, path: Path) -> float:
    """Load ``path`` and wait for its load event; the load time in seconds (navigation timing)."""
    driver.get(path.resolve().as_uri())
    timing = driver.execute_script(
        "var t=performance.getEntriesByType('navigation')[0];return [t.loadEventEnd,t.startTime];")
    return float(timing[0] - timing[1]) / 1e3


def ink(png: bytes) -> float:
    """The share of a screenshot's pixels that are not the background colour (0: a blank image)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    total = image.width * image.height
    colours = image.getcolors(total) or [(total, (255, 255, 255))]
    return 1 - max(count for count, _ in colours) / total
