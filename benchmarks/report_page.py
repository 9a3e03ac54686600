"""``kvtest report`` over 100 nights: build time, page size, and load and search time in headless
Chromium (tests/harness/browser.py). Run from the repository root:

    python benchmarks/report_page.py [--nights 100] [--loads 3]

The nights are synthetic, built from the results of a real sim run (tests/harness/nights.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvtest import cli  # noqa: E402
from tests.harness import browser  # noqa: E402
from tests.harness import nights as story  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=100)
    parser.add_argument("--loads", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "nights", Path(tmp) / "report.html"
        story.make_nights(folder, args.nights)
        start = time.perf_counter()
        rc = cli.main(["report", str(folder), "-o", str(out)])
        build = time.perf_counter() - start
        assert rc == 0, rc
        tests = out.read_text().count('<tr id="t-')
        print(f"nights: {args.nights}, tests per night: {tests}")
        print(f"build (kvtest report, gate replayed over every night): {build:.2f} s")
        print(f"page size: {out.stat().st_size / 1024:.0f} KiB")
        why = browser.unavailable()
        if why is not None:
            print(f"browser: not measured ({why})")
            return 0
        from selenium.webdriver.common.by import By

        driver = browser.start()
        try:
            loads = [browser.open_page(driver, out) for _ in range(args.loads)]
            errors = browser.console_errors(driver)
            search = driver.find_element(By.ID, "q")
            start = time.perf_counter()
            search.send_keys("pull_blocks")
            driver.execute_script("return document.querySelectorAll('tr.hidden').length")
            typed = time.perf_counter() - start
            charts = len(driver.find_elements(By.CSS_SELECTOR, "svg.chart"))
        finally:
            driver.quit()
        print(f"load in headless Chromium (navigation start to load event), median of {args.loads}: "
              f"{statistics.median(loads) * 1e3:.0f} ms (min {min(loads) * 1e3:.0f}, max {max(loads) * 1e3:.0f})")
        print(f"search 'pull_blocks' typed and filtered: {typed * 1e3:.0f} ms; charts drawn: {charts}; "
              f"console errors: {len(errors)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
