from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvtest import cli
from kvtest.results.compare import DROP, FASTER, IN_BAND, NOT_SIGNIFICANT, decide, parse_max_drop
from kvtest.results.metrics import TOO_NOISY, TOO_SMALL, TransferLog
from kvtest.results.results import ResultsWriter, role_entry

REPO = Path(__file__).resolve().parents[2]
PULL = "tests/samples/test_pull_blocks.py::test_pull_blocks[fp16-2x4MiB]"
PUSH = "tests/samples/test_push_cache.py::test_push_cache[fp32]"
XPYD = "tests/samples/test_xpyd.py::test_xpyd[2p2d]"
BASE_SECONDS = {PULL: 0.002, PUSH: 0.004, XPYD: 0.008}
#: ten distinct factors within +-3.6 % of the base time, median the base: a quiet machine's spread
JITTER = [1 + 0.008 * ((i * 7) % 10 - 4.5) for i in range(10)]


def _write(path: Path, *, cann="8.3.RC1", outcomes=None, slower=None, missing=(), repeats=10,
           nbytes=8_000_000, created=None):
    """A results file with three passing tests, each timing ``repeats`` transfers of ``nbytes`` (the
    gateable 10 x 8 MB by default); ``slower`` divides a test's GB/s by that factor."""
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
        for i in range(repeats):
            log.add(api, nbytes, seconds * slower.get(test, 1.0) * JITTER[i % len(JITTER)])
        step = None if outcome == "passed" else "pull"
        writer.add(test, outcome, {"p0": role_entry("passed"), "d0": role_entry(outcome, step=step)},
                   log.records)
    if created is not None:  # the writer stamps "now"; history tests need an order
        doc = json.loads(path.read_text())
        doc["created"] = created
        path.write_text(json.dumps(doc))
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


def _row(out: str, test: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(test))


def test_identical_files_pass(capsys, baseline):
    code, out, err = _compare(capsys, baseline, baseline)
    assert code == 0, f"expected exit 0 (no regression), got {code}:\n{out}"
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"baseline: {baseline} (run run-8.3.RC1, ")
    assert "  cann: 8.3.RC1 (unchanged)" in lines
    assert "max drop: 10%" in lines
    assert lines[-1] == "result: no regression (3 rows compared)"
    assert next(line for line in lines if line.startswith("TEST ")).split() == ["TEST", "API", "OUTCOME", "GB/S", "CHANGE", "P", "SAMPLES", "VERDICT"]
    assert _row(out, PULL).split() == [PULL, "pull_blocks", "passed", "->", "passed", "4.00", "->", "4.00",
                                       "+0.0%", "p=1", "10/10", "ok"]


def test_fingerprint_changes_head_the_report(capsys, baseline, tmp_path):
    current = _write(tmp_path / "current.json", cann="8.5.0")
    code, out, _ = _compare(capsys, baseline, current)
    assert code == 0, f"expected exit 0 (a fingerprint change alone is no regression), got {code}:\n{out}"
    lines = out.splitlines()
    assert lines[2:6] == ["fingerprint:", "  cann: 8.3.RC1 -> 8.5.0", "  backend: npu (unchanged)",
                          "  torch: 2.1.0 (unchanged)"]


def test_a_test_that_now_fails_is_a_regression(capsys, baseline, tmp_path):
    current = _write(tmp_path / "current.json", cann="8.5.0", outcomes={PUSH: "failed"})
    code, out, _ = _compare(capsys, baseline, current)
    assert code == 1, f"expected exit 1 (a test that passed now fails), got {code}:\n{out}"
    row = next(line for line in out.splitlines() if line.startswith(PUSH))
    assert "passed -> failed" in row and row.endswith("FAILED")
    assert out.splitlines()[-1] == f"result: 1 regression(s): FAILED {PUSH} [push_cache]"


@pytest.mark.parametrize(("outcome", "verdict"), [("error", "ERROR"), ("skipped", "SKIPPED")])
def test_error_and_skip_after_a_pass_are_regressions(capsys, baseline, tmp_path, outcome, verdict):
    current = _write(tmp_path / "current.json", outcomes={PULL: outcome})
    code, out, _ = _compare(capsys, baseline, current)
    assert code == 1, f"expected exit 1 ({outcome} after a pass), got {code}:\n{out}"
    assert f"{verdict} {PULL}" in out.splitlines()[-1]


def test_a_missing_test_is_a_regression(capsys, baseline, tmp_path):
    current = _write(tmp_path / "current.json", missing=(XPYD,))
    code, out, _ = _compare(capsys, baseline, current)
    assert code == 1, f"expected exit 1 (a test that passed is missing), got {code}:\n{out}"
    row = next(line for line in out.splitlines() if line.startswith(XPYD))
    assert "passed -> -" in row and "1.00 -> -" in row and row.endswith("MISSING")
    assert out.splitlines()[-1] == f"result: 1 regression(s): MISSING {XPYD} [pull_blocks]"


def test_new_fixed_and_still_failing_tests_are_not_regressions(capsys, tmp_path):
    base = _write(tmp_path / "b.json", outcomes={PULL: "failed", PUSH: "failed"}, missing=(XPYD,))
    current = _write(tmp_path / "c.json", outcomes={PUSH: "failed"})
    code, out, _ = _compare(capsys, base, current)
    assert code == 0, f"expected exit 0 (new, fixed, still failing), got {code}:\n{out}"
    rows = [line for line in out.splitlines() if line.startswith("tests/")]
    verdicts = {line.split()[0]: line.rsplit("  ", 1)[-1] for line in rows}
    assert verdicts == {PULL: "fixed", PUSH: "still failed", XPYD: "new"}


@pytest.mark.parametrize(("max_drop", "code"), [("10%", 1), ("30%", 0), ("0.1", 1), ("30", 0)])
def test_bandwidth_drop_against_the_threshold(capsys, baseline, tmp_path, max_drop, code):
    current = _write(tmp_path / "current.json", slower={PULL: 1.25})  # 4.0 -> 3.2 GB/s: 20 % drop
    got, out, _ = _compare(capsys, baseline, current, "--max-drop", max_drop)
    assert got == code, f"expected exit {code} for a 20% drop at --max-drop {max_drop}, got {got}:\n{out}"
    row = _row(out, PULL)
    # 10 vs 10 samples that do not overlap: the exact two-sided U test gives 2 / C(20, 10)
    assert "4.00 -> 3.20" in row and "-20.0%" in row and "p=1.1e-05" in row and "10/10" in row
    assert row.endswith(DROP if code else "ok")
    if code:
        assert out.splitlines()[-1] == (f"result: 1 regression(s): {DROP} {PULL} [pull_blocks] "
                                        "(-20.0%, p=1.1e-05)")


def test_a_faster_run_is_reported_as_an_improvement(capsys, baseline, tmp_path):
    current = _write(tmp_path / "current.json", slower={PULL: 0.5})
    code, out, _ = _compare(capsys, baseline, current, "--max-drop", "0")
    assert code == 0, f"expected exit 0 (faster is no regression), got {code}:\n{out}"
    assert _row(out, PULL).endswith(FASTER) and "+100.0%" in _row(out, PULL)
    assert out.splitlines()[-2] == f"improvements: 1: {PULL} [pull_blocks] (+100.0%, p=1.1e-05)"


@pytest.mark.parametrize("kind", ["one-shot", "small"])
def test_small_or_one_shot_transfers_are_compared_for_outcome_only(capsys, tmp_path, kind):
    """The false alarm of issue 12: a few KiB, timed once, read 0.02 -> 0.00 GB/s (-94.6%)."""
    size = {"repeats": 1} if kind == "one-shot" else {"nbytes": 4096}
    base = _write(tmp_path / "b.json", **size)
    current = _write(tmp_path / "c.json", slower={PULL: 20.0}, **size)
    code, out, _ = _compare(capsys, base, current)
    assert code == 0, f"expected exit 0 ({kind} transfers are not gated), got {code}:\n{out}"
    row = _row(out, PULL)
    assert "-95.0%" in row and row.endswith(TOO_SMALL)
    # ... but an outcome still gates them
    failing = _write(tmp_path / "f.json", outcomes={PULL: "failed"}, **size)
    code, out, _ = _compare(capsys, base, failing)
    assert code == 1, f"expected exit 1 (a {kind} test that passed now fails), got {code}:\n{out}"


def _set_seconds(path: Path, test: str, seconds: list[float]) -> None:
    doc = json.loads(path.read_text())
    doc["tests"][test]["transfers"] = [{**t, "seconds": s} for t, s in zip(doc["tests"][test]["transfers"],
                                                                          seconds)]
    path.write_text(json.dumps(doc))


def test_a_drop_inside_the_spread_is_not_significant(capsys, tmp_path):
    base = _write(tmp_path / "b.json", repeats=5)
    current = _write(tmp_path / "c.json", repeats=5)
    _set_seconds(base, PULL, [0.0020, 0.0021, 0.0022, 0.0029, 0.0030])
    _set_seconds(current, PULL, [0.0020, 0.0021, 0.0029, 0.0030, 0.0031])
    code, out, _ = _compare(capsys, base, current)
    assert code == 0, f"expected exit 0 (the medians differ 24 %, but the samples overlap), got {code}:\n{out}"
    row = _row(out, PULL)
    assert "-24.1%" in row and "p=0.67" in row and "5/5" in row and row.endswith(NOT_SIGNIFICANT)


def test_samples_spread_over_a_busy_host_are_too_noisy_to_gate(capsys, tmp_path):
    """Two clean sim runs on a loaded 2-core host: medians 7x apart, each run spread +-100 %."""
    base = _write(tmp_path / "b.json")
    current = _write(tmp_path / "c.json")
    _set_seconds(base, PULL, [s / 1000 for s in (7, 16, 28, 28, 28, 39, 59, 78, 100, 147)])
    _set_seconds(current, PULL, [s / 1000 for s in (18, 38, 74, 98, 104, 117, 146, 162, 162, 297)])
    code, out, _ = _compare(capsys, base, current)
    assert code == 0, f"expected exit 0 (noise, not a slowdown), got {code}:\n{out}"
    assert _row(out, PULL).endswith(TOO_NOISY)
    doc = json.loads(current.read_text())  # the writer marked it too, in the results file
    assert doc["tests"][PULL]["summary"]["pull_blocks"]["gateable"] is True  # (edited after writing)


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


def _nightly_pull(tmp_path: Path, name: str, fault: str = "") -> Path:
    """One real sim run of the nightly 1 MiB-block pull_blocks case (10 timed pulls of 320 MiB) into
    ``name``.json. (The 8 MiB case's pulls are dominated by control-store round trips, too noisy here.)

    Each pull may take 20 s, not the package's 1 s: under CI's load one clean 320 MiB sim pull took
    over 1 s (LLM_TIMEOUT; the other pulls' p99 was 840 ms), and timeouts are not what this test is about."""
    pytest.importorskip("nixl_cu12", reason="the sim backend needs nixl")
    out = tmp_path / f"{name}.json"
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "KVTEST_SIM_FAULT": fault, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/samples/test_pull_blocks.py", "--kv-profile", "nightly",
         "-k", "1MiB-blocks", "--kv-sync-kv-timeout", "20000", f"--kv-results={out}",
         f"--kv-logs={tmp_path / 'logs'}", "-p", "no:cacheprovider", "-p", "no:randomly", "-q"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"the {name} run should pass (the slow fault keeps the bytes right):\n" \
                                 f"{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
    return out


@pytest.mark.full
def test_a_real_slowdown_is_caught(capsys, tmp_path):
    """End to end: ``slow=3@pull_blocks:d0`` stretches every pull on the sim; compare names test, API,
    change and p-value, and exits 1. (slow=1.5 and slow=1.05 are in docs/results.md's figures; here
    1.5 was once hidden by load: a clean run 1.6 times slower than the slow one, CI with 4 lanes busy,
    so the end-to-end check takes a slowdown no load swing on this machine reaches.)

    On a host so busy that the sim's pulls spread wider than half their median, both runs are
    ``too noisy to gate`` and the gate rightly says nothing: then this test checks that much and
    skips, naming the spread, rather than pass on a decision it could not make."""
    base = _nightly_pull(tmp_path, "clean")
    slow = _nightly_pull(tmp_path, "slow", "slow=3@pull_blocks:d0")
    code, out, _ = _compare(capsys, base, slow)
    row = next(line for line in out.splitlines() if " pull_blocks " in line)
    if row.endswith(TOO_NOISY):
        assert code == 0, f"expected exit 0 (nothing gated), got {code}:\n{out}"
        notes = [entry["summary"]["pull_blocks"]["gate_note"] for path in (base, slow)
                 for entry in json.loads(path.read_text())["tests"].values()]
        pytest.skip(f"this host is too busy to time sim pulls: clean {notes[0]}; slow {notes[1]}")
    assert code == 1, f"expected exit 1 (every pull took 3 times as long), got {code}:\n{out}"
    last = out.splitlines()[-1]
    assert last.startswith("result: 1 regression(s): DROP tests/samples/test_pull_blocks.py::test_pull_blocks[")
    assert "1MiB-blocks] [pull_blocks] (-" in last and ", p=" in last
    # swap_blocks (timed twice, not slowed) is compared for outcome only
    assert any(line.endswith(TOO_SMALL) and " swap_blocks " in line for line in out.splitlines())


# -- the decision rule, on known samples ------------------------------------------------------------

QUIET = [10.0, 10.1, 9.9, 10.2, 9.8, 10.05, 9.95, 10.15, 9.85, 10.0]


@pytest.mark.parametrize(("factor", "verdict"), [
    (1 / 1.5, DROP),      # slow=1.5: -33 %, well beyond 10 % and significant
    (1 / 1.05, "ok"),     # slow=1.05: -4.8 %, significant but inside --max-drop
    (1.0, "ok"),
    (1.5, FASTER),
])
def test_decide_on_a_quiet_history(factor, verdict):
    decision = decide([QUIET], [v * factor for v in QUIET], max_drop=0.10, alpha=0.05)
    assert decision.verdict == verdict, decision
    assert decision.change == pytest.approx(factor - 1)
    assert decision.band is None  # one baseline run: no history band
    if factor != 1.0:
        assert decision.p_value < 0.001


def test_decide_needs_significance_as_well_as_size():
    # medians 20 % apart, but the samples overlap entirely: a noisy machine, not a slowdown
    noisy_base = [5.0, 15.0, 10.0, 20.0, 8.0]
    noisy_now = [4.0, 14.0, 8.0, 19.0, 7.0]
    decision = decide([noisy_base], noisy_now, max_drop=0.10, alpha=0.05)
    assert decision.change == pytest.approx(-0.2)
    assert decision.p_value > 0.05
    assert decision.verdict == NOT_SIGNIFICANT


def test_decide_takes_the_noise_band_from_history():
    # three clean runs whose medians spread -10 % .. +10 % around the pooled median
    history = [[v * 0.9 for v in QUIET], QUIET, [v * 1.1 for v in QUIET]]
    within = decide(history, [v * 0.85 for v in QUIET], max_drop=0.10, alpha=0.05)
    assert within.band == pytest.approx((-0.1, 0.1))
    assert within.p_value < 0.05 and within.change == pytest.approx(-0.15)
    assert within.verdict == IN_BAND  # 15 % below typical, but only 5 % below the slowest clean run
    beyond = decide(history, [v * 0.7 for v in QUIET], max_drop=0.10, alpha=0.05)
    assert beyond.verdict == DROP  # 30 % below: 20 % below the slowest clean run


def _history_folder(tmp_path: Path, factors: list[float]) -> Path:
    folder = tmp_path / "accepted"
    folder.mkdir()
    for day, factor in enumerate(factors, start=1):
        _write(folder / f"run{day}.json", slower={PULL: factor}, created=f"2026-11-{day:02d}T00:00:00+00:00")
    return folder


def test_a_baseline_folder_gives_the_noise_band(capsys, tmp_path):
    folder = _history_folder(tmp_path, [1 / 0.9, 1.0, 1 / 1.1])
    within = _write(tmp_path / "within.json", slower={PULL: 1 / 0.85})
    code, out, _ = _compare(capsys, folder, within)
    assert code == 0, f"expected exit 0 (-15 % is inside what history shows +- 10 %), got {code}:\n{out}"
    assert out.splitlines()[:3] == [line for line in out.splitlines() if line.startswith("baseline: ")]
    assert "run3.json" in out.splitlines()[0]  # newest first
    assert "history: 3 baseline runs" in out
    row = _row(out, PULL)
    assert "30/10" in row and "-10%..+10%" in row and row.endswith(IN_BAND)

    dropped = _write(tmp_path / "dropped.json", slower={PULL: 1 / 0.7})
    code, out, _ = _compare(capsys, folder, dropped)
    assert code == 1, f"expected exit 1 (-30 % is beyond the history band), got {code}:\n{out}"
    assert _row(out, PULL).endswith(DROP)


def test_history_takes_the_newest_runs_and_never_the_current_one(capsys, tmp_path):
    folder = _history_folder(tmp_path, [1 / 0.5, 1.0, 1.0])  # the oldest run was twice as slow
    current = _write(folder / "current.json", slower={PULL: 1 / 0.8}, created="2026-12-01T00:00:00+00:00")
    code, out, _ = _compare(capsys, folder, current, "--history", "2")
    assert code == 1, f"expected exit 1 (-20 % against the two newest runs), got {code}:\n{out}"
    assert [line.split()[1].rsplit("/", 1)[-1] for line in out.splitlines()[:2]] == ["run3.json", "run2.json"]
    assert "history: 2 baseline runs" in out and "20/10" in _row(out, PULL)
    code, out, _ = _compare(capsys, folder, current, "--history", "3")
    assert code == 0, f"expected exit 0 (the slow oldest run widens the band), got {code}:\n{out}"


@pytest.mark.parametrize(("args", "message"), [
    (("--alpha", "0"), "--alpha '0' must be a number between 0 and 1 (exclusive), e.g. 0.05"),
    (("--alpha", "x"), "--alpha 'x' must be a number between 0 and 1"),
    (("--history", "0"), "--history '0' must be a whole number of runs >= 1, e.g. 5"),
])
def test_bad_alpha_and_history(capsys, baseline, args, message):
    code, out, err = _compare(capsys, baseline, baseline, *args)
    assert code == 2, f"expected exit 2 (bad option), got {code}"
    assert out == ""
    _one_line_error(err, message)


def test_an_empty_baseline_folder_is_a_one_line_error(capsys, baseline, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = _compare(capsys, empty, baseline)
    assert code == 2, f"expected exit 2 (no baseline), got {code}"
    _one_line_error(err, f"{empty}: a baseline folder with no results files (*.json)")


def test_an_old_results_file_without_gate_fields_still_compares(capsys, baseline, tmp_path):
    old = tmp_path / "old.json"
    doc = json.loads(baseline.read_text())
    for entry in doc["tests"].values():
        for summary in entry["summary"].values():
            for key in ("median_gbps", "gateable", "gate_note"):
                del summary[key]
    old.write_text(json.dumps(doc))
    current = _write(tmp_path / "current.json", slower={PULL: 1.25})
    code, out, _ = _compare(capsys, old, current)
    assert code == 1, f"expected exit 1 (the old file's samples gate as well), got {code}:\n{out}"
    assert _row(out, PULL).endswith(DROP)


def test_the_chart_marks_gated_and_too_small_rows(tmp_path):
    pytest.importorskip("matplotlib")
    from kvtest.results import chart
    from kvtest.results.compare import compare_results
    from kvtest.results.results import load_results

    base = load_results(_write(tmp_path / "b.json"))
    slow = load_results(_write(tmp_path / "c.json", slower={PULL: 1.5}))
    gated = {r.test: r for r in compare_results(base, slow, 0.1)}
    assert (chart._note(gated[PULL]), chart._change(gated[PULL])) == (DROP, "-33.3% p=1.1e-05")
    assert (chart._note(gated[PUSH]), chart._change(gated[PUSH])) == ("", "+0.0% p=1")
    one = load_results(_write(tmp_path / "b1.json", repeats=1))
    small = {r.test: r for r in compare_results(one, one, 0.1)}
    assert (chart._note(small[PULL]), chart._change(small[PULL])) == (TOO_SMALL, "+0.0%")
