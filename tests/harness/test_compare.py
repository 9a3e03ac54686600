from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvtest import cli
from kvtest.results.compare import parse_max_drop
from kvtest.results.metrics import TransferLog
from kvtest.results.results import ResultsWriter, role_entry

REPO = Path(__file__).resolve().parents[2]
PULL = "tests/samples/test_pull_blocks.py::test_pull_blocks[fp16-2x4MiB]"
PUSH = "tests/samples/test_push_cache.py::test_push_cache[fp32]"
XPYD = "tests/samples/test_xpyd.py::test_xpyd[2p2d]"
BASE_SECONDS = {PULL: 0.002, PUSH: 0.004, XPYD: 0.008}


def _write(path: Path, *, cann="8.3.RC1", outcomes=None, slower=None, missing=()):
    """A results file with three passing tests; ``slower`` divides a test's GB/s by that factor."""
    outcomes = outcomes or {}
    slower = slower or {}
    writer = ResultsWriter(path, run_id=f"run-{cann}",
                           fingerprint={"backend": "npu", "cann": cann, "torch": "2.1.0", "host": "n1"})
    for test, seconds in BASE_SECONDS.items():
        if test in missing:
            continue
        outcome = outcomes.get(test, "passed")
        log = TransferLog(role="d0")
        api = "push_cache" if test == PUSH else "pull_blocks"
        for _ in range(3):
            log.add(api, 8_000_000, seconds * slower.get(test, 1.0))
        step = None if outcome == "passed" else "pull"
        writer.add(test, outcome, {"p0": role_entry("passed"), "d0": role_entry(outcome, step=step)},
                   log.records)
    return path


@pytest.fixture
def baseline(tmp_path):
    return _write(tmp_path / "baseline.json")


def _compare(capsys, *argv):
    code = cli.main(["compare", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str, text: str):
    assert err.count("\n") == 1, err
    assert err.startswith("kvtest compare: error: ")
    assert text in err
    assert "Traceback" not in err


def test_identical_files_pass(capsys, baseline):
    code, out, err = _compare(capsys, baseline, baseline)
    assert code == 0, out
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"baseline: {baseline} (run run-8.3.RC1, ")
    assert "  cann: 8.3.RC1 (unchanged)" in lines
    assert "max drop: 10%" in lines
    assert lines[-1] == "result: no regression (3 rows compared)"
    row = next(line for line in lines if line.startswith(PULL))
    assert row.split() == [PULL, "pull_blocks", "passed", "->", "passed", "4.00", "->", "4.00", "+0.0%", "ok"]


def test_fingerprint_changes_head_the_report(capsys, baseline, tmp_path):
    current = _write(tmp_path / "current.json", cann="8.5.0")
    code, out, _ = _compare(capsys, baseline, current)
    assert code == 0
    lines = out.splitlines()
    assert lines[2:6] == ["fingerprint:", "  cann: 8.3.RC1 -> 8.5.0", "  backend: npu (unchanged)",
                          "  torch: 2.1.0 (unchanged)"]


def test_a_test_that_now_fails_is_a_regression(capsys, baseline, tmp_path):
    current = _write(tmp_path / "current.json", cann="8.5.0", outcomes={PUSH: "failed"})
    code, out, _ = _compare(capsys, baseline, current)
    assert code == 1
    row = next(line for line in out.splitlines() if line.startswith(PUSH))
    assert "passed -> failed" in row and row.endswith("FAILED")
    assert out.splitlines()[-1] == f"result: 1 regression(s): FAILED {PUSH} [push_cache]"


@pytest.mark.parametrize(("outcome", "verdict"), [("error", "ERROR"), ("skipped", "SKIPPED")])
def test_error_and_skip_after_a_pass_are_regressions(capsys, baseline, tmp_path, outcome, verdict):
    current = _write(tmp_path / "current.json", outcomes={PULL: outcome})
    code, out, _ = _compare(capsys, baseline, current)
    assert code == 1
    assert f"{verdict} {PULL}" in out.splitlines()[-1]


def test_a_missing_test_is_a_regression(capsys, baseline, tmp_path):
    current = _write(tmp_path / "current.json", missing=(XPYD,))
    code, out, _ = _compare(capsys, baseline, current)
    assert code == 1
    row = next(line for line in out.splitlines() if line.startswith(XPYD))
    assert "passed -> -" in row and "1.00 -> -" in row and row.endswith("MISSING")
    assert out.splitlines()[-1] == f"result: 1 regression(s): MISSING {XPYD} [pull_blocks]"


def test_new_fixed_and_still_failing_tests_are_not_regressions(capsys, tmp_path):
    base = _write(tmp_path / "b.json", outcomes={PULL: "failed", PUSH: "failed"}, missing=(XPYD,))
    current = _write(tmp_path / "c.json", outcomes={PUSH: "failed"})
    code, out, _ = _compare(capsys, base, current)
    assert code == 0, out
    rows = [line for line in out.splitlines() if line.startswith("tests/")]
    verdicts = {line.split()[0]: line.rsplit("  ", 1)[-1] for line in rows}
    assert verdicts == {PULL: "fixed", PUSH: "still failed", XPYD: "new"}


@pytest.mark.parametrize(("max_drop", "code"), [("10%", 1), ("30%", 0), ("0.1", 1), ("30", 0)])
def test_bandwidth_drop_against_the_threshold(capsys, baseline, tmp_path, max_drop, code):
    current = _write(tmp_path / "current.json", slower={PULL: 1.25})  # 4.0 -> 3.2 GB/s: 20 % drop
    got, out, _ = _compare(capsys, baseline, current, "--max-drop", max_drop)
    assert got == code, out
    row = next(line for line in out.splitlines() if line.startswith(PULL))
    assert "4.00 -> 3.20" in row and "-20.0%" in row
    assert row.endswith("DROP" if code else "ok")


def test_a_faster_run_is_fine(capsys, baseline, tmp_path):
    current = _write(tmp_path / "current.json", slower={PULL: 0.5})
    code, out, _ = _compare(capsys, baseline, current, "--max-drop", "0")
    assert code == 0
    assert "+100.0%" in out


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "current.json: not JSON (Expecting property name enclosed in double quotes"),
    (json.dumps({"testsuites": []}), "current.json: not a kvtest results file"),
    (json.dumps({"kvtest_results": 7}), "current.json: results schema version 7 is not supported"),
])
def test_unusable_files_are_one_line_errors(capsys, baseline, tmp_path, content, message):
    current = tmp_path / "current.json"
    current.write_text(content)
    code, out, err = _compare(capsys, baseline, current)
    assert code == 2
    assert out == ""
    _one_line_error(err, message)


def test_missing_file(capsys, baseline, tmp_path):
    code, _, err = _compare(capsys, tmp_path / "nope.json", baseline)
    assert code == 2
    _one_line_error(err, "nope.json: no such file")


@pytest.mark.parametrize(("value", "message"), [
    ("-5%", "--max-drop '-5%' must be between 0% and 100%"),
    ("150%", "--max-drop '150%' must be between 0% and 100%"),
    ("101", "--max-drop '101' must be between 0% and 100%"),
    ("lots", "--max-drop 'lots' is not a number; use e.g. 10%, 10 or 0.1"),
    ("nan", "must be between 0% and 100%"),
])
def test_bad_max_drop(capsys, baseline, value, message):
    code, out, err = _compare(capsys, baseline, baseline, f"--max-drop={value}")
    assert code == 2
    assert out == ""
    _one_line_error(err, message)


@pytest.mark.parametrize(("text", "fraction"), [
    ("10%", 0.10), ("10", 0.10), ("0.1", 0.10), (" 25 % ", 0.25), ("0", 0.0), ("0%", 0.0),
    ("1", 1.0), ("100%", 1.0), ("100", 1.0), ("2.5%", 0.025),
])
def test_parse_max_drop(text, fraction):
    assert parse_max_drop(text) == pytest.approx(fraction)


def test_plot_writes_a_png(capsys, baseline, tmp_path):
    pytest.importorskip("matplotlib")
    current = _write(tmp_path / "current.json", cann="8.5.0", outcomes={PUSH: "failed"},
                     slower={XPYD: 1.25})
    png = tmp_path / "chart" / "compare.png"
    png.parent.mkdir()
    code, out, _ = _compare(capsys, baseline, current, "--plot", png)
    assert code == 1
    assert out.splitlines()[-1] == f"chart: {png}"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000


def test_plot_without_matplotlib_is_a_one_line_error(capsys, baseline, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    code, out, err = _compare(capsys, baseline, baseline, "--plot", tmp_path / "x.png")
    assert code == 2
    assert out == ""
    _one_line_error(err, "--plot needs matplotlib: pip install 'kvtest[plot]'")
    assert not (tmp_path / "x.png").exists()


def _subprocess(*argv):
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-m", "kvtest.cli", "compare", *map(str, argv)],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def test_command_line(baseline, tmp_path):
    same = _subprocess(baseline, baseline)
    assert same.returncode == 0, same.stderr
    assert same.stdout.splitlines()[-1] == "result: no regression (3 rows compared)"

    failing = _write(tmp_path / "current.json", outcomes={PULL: "failed"})
    regressed = _subprocess(baseline, failing)
    assert regressed.returncode == 1
    assert f"FAILED {PULL}" in regressed.stdout

    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"kvtest_results": 1, "tests": ')
    broken = _subprocess(baseline, corrupt)
    assert broken.returncode == 2
    assert broken.stdout == ""
    _one_line_error(broken.stderr, f"{corrupt}: not JSON")


def test_rows_without_comparable_bandwidth(tmp_path):
    from kvtest.results.compare import compare_results
    from kvtest.results.results import load_results

    def one(path, transfers):
        writer = ResultsWriter(path, run_id="r", fingerprint={})
        writer.add("t.py::test_a", "passed", {}, transfers)
        return load_results(path)

    log = TransferLog()
    log.add("pull_blocks", 1000, 0.001)
    none = one(tmp_path / "none.json", [])
    some = one(tmp_path / "some.json", log.records)
    assert [(r.api, r.verdict) for r in compare_results(none, none, 0.1)] == [(None, "ok")]
    assert [(r.api, r.verdict) for r in compare_results(none, some, 0.1)] == [("pull_blocks", "new api")]
    assert [(r.api, r.verdict) for r in compare_results(some, none, 0.1)] == [("pull_blocks", "no data")]
