"""benchmarks/results_writer.py runs on a results file and prints both writers side by side; a file
that is not one is a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
from loading import load_file

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data" / "sim-smoke-results.json"

bench = load_file(ROOT / "benchmarks" / "results_writer.py", "kvtest_results_writer_benchmark")


def test_it_prints_both_writers_and_their_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main([str(DATA), "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "sim-smoke-results.json: 62 tests" in out
    for name in ("whole document", "ResultsWriter"):
        assert any(line.strip().startswith(name) and "ms a test" in line for line in out.splitlines())
    assert "ratio " in out


def test_a_file_that_is_not_results_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(SystemExit):
        bench.main([str(bad)])
    assert "bad.json is not a kvtest results file" in capsys.readouterr().err
