"""benchmarks/first_touch.py times fresh arenas with and without huge pages side by side; bad sizes are a
one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
from loading import load_file

ROOT = Path(__file__).resolve().parents[2]

bench = load_file(ROOT / "benchmarks" / "first_touch.py", "kvtest_first_touch_benchmark")


def test_it_prints_both_columns_every_round_and_the_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--mib", "8", "--repeat", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("transparent huge pages: ") and lines[0].endswith("8 MiB per arena")
    rounds = [line.split() for line in lines if line.split()[:1] in (["1"], ["2"], ["best"])]
    assert [r[0] for r in rounds] == ["1", "2", "best"]
    assert all(len(r) == 5 and all(x.endswith("s") and float(x[:-1]) >= 0 for x in r[1:]) for r in rounds)
    assert lines[-1].startswith("first touch with huge pages: ") and "GiB/s against" in lines[-1]


@pytest.mark.parametrize("argv", [["--mib", "1"], ["--repeat", "0"]])
def test_bad_sizes_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert "need --mib >= 2 and --repeat >= 1" in capsys.readouterr().err
