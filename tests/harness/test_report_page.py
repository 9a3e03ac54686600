"""``kvtest report``: the page from a real run and from a folder of synthetic nights (tests/harness/nights.py),
the gate's decisions as kvtest compare takes them, the pytest-html figures, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kvtest import cli
from kvtest.results.compare import DROP, compare_results
from kvtest.results.page import build_page, load_runs, nights
from kvtest.results.results import load_results
from tests.harness import nights as story

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("nights")
    story.make_nights(path, 12)
    return path


def _external_references(page: str) -> list[str]:
    """Anything the page would fetch: src/href that is not an anchor, url(), @import."""
    found = re.findall(r'(?:src|href)="(?!#)[^"]*"', page)
    return found + re.findall(r"url\(|@import", page)


def test_the_page_of_a_real_run_shows_every_test_and_role():
    real = load_results(story.REAL)
    page = build_page([real])
    for nodeid, entry in real.tests.items():
        row = re.search(rf'<tr id="[^"]+" class="([^"]+)"[^>]*><td><code>{re.escape(_html(nodeid))}</code>', page)
        assert row, nodeid
        assert row.group(1).split()[0] == entry["outcome"]
        for role in entry["roles"].values():
            if role["message"]:
                assert _html(role["message"]) in page
    failing = [n for n, e in real.tests.items() if e["outcome"] == "failed"]
    assert f"{len(failing)} failing" in page
    assert 'http-equiv="Content-Security-Policy"' in page and "default-src 'none'" in page
    assert _external_references(page) == []


def _html(text: str) -> str:
    from html import escape

    return escape(text)


def test_the_external_reference_check_finds_one():
    assert _external_references('<link href="https://cdn.example/x.css"><img src="a.png">') == [
        'href="https://cdn.example/x.css"', 'src="a.png"']
    assert _external_references('<a href="#t-x">') == []


def test_the_gate_replays_kvtest_compare_over_the_nights(folder):
    runs = load_runs([folder])
    assert [r.run_id for r in runs] == [f"nightly-{i:03d}" for i in range(12)]
    replay = nights(runs, 0.1, 0.05, 5)
    assert replay[0].decision == "first baseline"
    env_night = replay[12 // 4]
    assert env_night.decision == "environment failures only" and len(env_night.environment) == 3
    assert not env_night.accepted
    newest = replay[-1]
    drops = [r for r in newest.regressions if r.verdict == DROP]
    assert drops and {r.api for r in drops} == {story.SLOW_API}
    assert any(r.test == story.failing_test(list(runs[-1].tests)) for r in newest.regressions)
    # every other night: no regression
    assert [i for i, n in enumerate(replay) if n.regressions] == [11]
    # the same rows kvtest compare gives against the newest accepted nights before it
    accepted = [n.results for n in replay[:-1] if n.accepted][::-1][:5]
    assert newest.rows == compare_results(accepted, runs[-1], 0.1, 0.05)
    changes = [(i, n.changes) for i, n in enumerate(replay) if n.changes]
    assert changes == [(4, ["cann 8.2.RC1 -> 8.3.RC1", "driver 23.0.3 -> 24.1.0"]),
                       (8, ["cann 8.3.RC1 -> 8.5.0"])]
    assert any("known issue went away" in line and "fixed upstream" in line for line in replay[8].issues)


def test_without_the_slowdown_the_newest_night_has_no_drop(tmp_path, monkeypatch):
    """The control of the one above: the DROP comes from the data, not from the page."""
    monkeypatch.setattr(story, "SLOWDOWN", 1.0)
    story.make_nights(tmp_path, 12)
    newest = nights(load_runs([tmp_path]), 0.1, 0.05, 5)[-1]
    assert [r.verdict for r in newest.regressions] == ["FAILED", "FAILED"]  # the injected failure only


def test_the_page_of_the_nights_marks_changes_regressions_and_issues(folder):
    page = build_page(load_runs([folder]))
    assert page.count('<g class="marker">') == 2 * len(re.findall(r"<h3>[a-z_]+</h3>", page))
    assert "cann 8.5.0" in page
    assert re.search(r'<circle class="point flagged"[^>]*><title>[^<]*DROP [^<]*pull_blocks', page)
    assert re.search(r"newest night: \d+ regressions", page)
    assert "known issue went away: transfer-layers-absolute-dst-index: fixed upstream" in page
    assert story.ENVIRONMENT_CAUSE in page
    assert page.count('class="cell-environment"') == 3
    assert _external_references(page) == []


def test_the_cli_writes_the_page_and_refuses_bad_input(folder, tmp_path, capsys):
    out = tmp_path / "site" / "report.html"
    assert cli.main(["report", str(folder), str(story.REAL), "-o", str(out)]) == 0
    assert "13 runs" in capsys.readouterr().out and out.read_text().startswith("<!DOCTYPE html>")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kvtest_results": 1}))
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in (([str(bad)], "lacks 'kvtest_version'"),
                          ([str(empty)], "a folder with no results files"),
                          ([str(tmp_path / "nope.json")], "no such file"),
                          ([str(folder), "--max-drop", "x"], "--max-drop 'x' is not a number")):
        assert cli.main(["report", *args, "-o", str(tmp_path / "x.html")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and err.startswith("kvtest report: error: ")
    assert not (tmp_path / "x.html").exists()


def test_pytest_html_gets_kvtests_figures(pytester):
    pytest.importorskip("pytest_html", reason="pytest-html is not installed (it comes with the dev extras)")
    pytester.makepyfile(
        """
        def test_fast(record_property):
            record_property("kv.d0.pull_blocks.gbps", 2.5)
            record_property("kv.d0.pull_blocks.bytes", 8388608)
        def test_env(record_property):
            record_property("kv.d0.push_blocks.gbps", 0.5)
            record_property("kv.failure", "environment")
            assert False
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--html=r.html", "--self-contained-html")
    result.assert_outcomes(passed=1, failed=1)
    page = (pytester.path / "r.html").read_text()
    assert "kvtest: GB/s per test, role and API" in page
    assert "d0 pull_blocks 2.5 GB/s" in page and "failure: environment" in page
    assert page.count('class="bar failed"') == 1


def test_without_pytest_html_kvtest_registers_nothing(pytester):
    pytester.makepyfile("def test_a(): pass")
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:html")
    result.assert_outcomes(passed=1)
