"""The report page in a real browser (headless Chromium): it loads without a console error, its charts
draw, a failing test and a regression are visible and can be found with the page's own search.

Skipped, with the reason, only where no browser can be driven (tests/harness/browser.py); .ci/docs
installs Debian's chromium so CI runs it. benchmarks/report_page.py measures 100 nights.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvtest.results import page as page_module
from kvtest.results.page import build_page, load_runs
from tests.harness import browser
from tests.harness import nights as story

pytestmark = pytest.mark.skipif(browser.unavailable() is not None, reason=str(browser.unavailable()))

SHOTS = Path(__file__).resolve().parents[2] / "kvtest-logs" / "report-screenshots"


@pytest.fixture(scope="module")
def driver():
    d = browser.start()
    yield d
    d.quit()


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pages")
    story.make_nights(root / "nights", 12)
    out = {"run": root / "run.html", "nights": root / "nights.html"}
    out["run"].write_text(build_page(load_runs([story.REAL])))
    out["nights"].write_text(build_page(load_runs([root / "nights"])))
    return out


def _visible_rows(driver, table: str) -> list:
    from selenium.webdriver.common.by import By

    return [r for r in driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr") if r.is_displayed()]


def _charts_ink(driver) -> list[float]:
    from selenium.webdriver.common.by import By

    charts = driver.find_elements(By.CSS_SELECTOR, "svg.chart")
    return [browser.ink(c.screenshot_as_png) for c in charts[:3]]


def test_a_real_run_loads_clean_and_its_failing_test_can_be_found(driver, pages):
    from selenium.webdriver.common.by import By

    browser.open_page(driver, pages["run"])
    assert browser.console_errors(driver) == []
    inks = _charts_ink(driver)
    assert inks and all(i > 0.02 for i in inks), inks
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / "run.png"))
    real = load_runs([story.REAL])[0]
    failing = [n for n, e in real.tests.items() if e["outcome"] == "failed"]
    assert failing, "the real run's results hold a failing test (it is what this test looks for)"
    # the callout links to the failing row, which is on screen after the jump
    driver.find_element(By.CSS_SELECTOR, "#failing a").click()
    row = driver.find_element(By.ID, driver.execute_script("return location.hash.slice(1)"))
    assert "failed" in row.get_attribute("class").split() and row.is_displayed()
    assert driver.execute_script("var r=arguments[0].getBoundingClientRect();return r.top>=0&&r.top<innerHeight",
                                 row)
    # the page's search and its "only failures" switch
    driver.find_element(By.ID, "bad").click()
    assert [r.find_element(By.TAG_NAME, "code").text for r in _visible_rows(driver, "tests")] == failing
    driver.find_element(By.ID, "bad").click()
    search = driver.find_element(By.ID, "q")
    search.send_keys(failing[0].split("[")[0].split("::")[-1])
    shown = _visible_rows(driver, "tests")
    assert 0 < len(shown) < len(real.tests) and any(r.get_attribute("id") == row.get_attribute("id") for r in shown)
    assert browser.console_errors(driver) == []


def test_the_nights_show_the_regression(driver, pages):
    from selenium.webdriver.common.by import By

    browser.open_page(driver, pages["nights"])
    assert browser.console_errors(driver) == []
    inks = _charts_ink(driver)
    assert len(inks) == 3 and all(i > 0.02 for i in inks), inks
    callout = driver.find_element(By.ID, "newest")
    assert callout.is_displayed() and "DROP" in callout.text and story.SLOW_API in callout.text
    flagged = driver.find_elements(By.CSS_SELECTOR, "circle.point.flagged")
    assert flagged and all(f.is_displayed() for f in flagged)
    driver.find_element(By.ID, "bad").click()
    nights_shown = _visible_rows(driver, "nights")
    assert len(nights_shown) == 1 and "nightly-011" in nights_shown[0].text and "DROP" in nights_shown[0].text
    driver.save_screenshot(str(SHOTS / "nights.png"))


def test_the_checks_catch_a_broken_page(driver, pages, tmp_path, monkeypatch):
    """Fault injection: a script error and a blocked fetch reach the console check, a page without its
    charts fails the ink check."""
    monkeypatch.setattr(page_module, "_JS", "document.getElementById('nosuch').focus();")
    broken = tmp_path / "broken.html"
    broken.write_text(build_page(load_runs([story.REAL])).replace(
        "</main>", '<img src="https://cdn.example.invalid/x.png"></main>'))
    browser.open_page(driver, broken)
    errors = browser.console_errors(driver)
    assert any("nosuch" in e or "null" in e for e in errors), errors
    assert any("Content Security Policy" in e or "cdn.example.invalid" in e for e in errors), errors
    blank = tmp_path / "blank.html"
    blank.write_text(pages["run"].read_text().replace("<svg class=\"chart\"", "<svg class=\"chart\" style=\"visibility:hidden\""))
    browser.open_page(driver, blank)
    assert _charts_ink(driver) == [0.0]
