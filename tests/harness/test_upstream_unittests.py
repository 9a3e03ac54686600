"""The upstream-unittests lane judges every outcome against its list of exceptions, and fails when the
list is wrong in either direction."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvtest.dropin import upstream_unittests as lane

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="" name="python.test_broken"><error message="collection failure">ImportError</error></testcase>
<testcase classname="python.test_configs.TestLlmConfig" name="test_ok" />
<testcase classname="python.test_configs.TestLlmConfig" name="test_bad"><failure message="x">x</failure></testcase>
<testcase classname="python.test_configs.TestLlmConfig" name="test_skipped"><skipped message="s" /></testcase>
</testsuite></testsuites>"""


def test_junit_outcomes_name_file_class_and_test() -> None:
    assert lane.outcomes_from_junit(JUNIT) == {
        "test_broken.py": False,
        "test_configs.py::TestLlmConfig::test_ok": True,
        "test_configs.py::TestLlmConfig::test_bad": False,
        "test_configs.py::TestLlmConfig::test_skipped": False,
    }


def test_judge_accepts_outcomes_the_list_predicts() -> None:
    outcomes = {"a.py::C::ok": True, "a.py::C::stub": False}
    verdict = lane.judge(outcomes, {"a.py::C::stub": "stub world"})
    assert verdict.ok
    assert "1 of 2 pass" in lane.report(verdict, {"a.py::C::stub": "stub world"})


@pytest.mark.parametrize(
    ("outcomes", "exceptions", "field"),
    [
        ({"a.py::C::t": False}, {}, "unexpected_failures"),
        ({"a.py::C::t": True}, {"a.py::C::t": "stub world"}, "unexpected_passes"),
        ({"a.py::C::t": True}, {"a.py::C::gone": "stub world"}, "stale"),
    ],
    ids=["unlisted-failure", "listed-pass", "listed-missing"],
)
def test_judge_fails_when_the_list_is_wrong(
    outcomes: dict[str, bool], exceptions: dict[str, str], field: str
) -> None:
    verdict = lane.judge(outcomes, exceptions)
    assert not verdict.ok
    assert getattr(verdict, field)
    assert "lane: FAILED" in lane.report(verdict, exceptions)


def test_an_exception_needs_a_reason() -> None:
    with pytest.raises(lane.LaneError, match="needs a reason"):
        lane.parse_exceptions("# c\na.py::C::t\n")
    assert lane.parse_exceptions("# c\n\na.py::C::t the stub world\n") == {"a.py::C::t": "the stub world"}


def test_the_checked_list_parses_and_gives_every_entry_a_reason() -> None:
    reasons = lane.load_exceptions()
    assert all(reason.strip() for reason in reasons.values())


def _archive_or_skip() -> Path:
    try:
        return lane.find_archive(None)
    except lane.LaneError as exc:
        pytest.skip(str(exc))


def test_the_lane_fails_when_a_listed_test_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """End to end on one real upstream test: listed, it fails the lane; unlisted, the lane passes."""
    _archive_or_skip()
    test = "test_configs.py::TestLlmConfig::test_gen_options_with_list_device_id"
    listed = tmp_path / "listed.txt"
    listed.write_text(f"{test} pretend it cannot pass\n")
    args = ["--timeout", "120", "--", "-k", "test_gen_options_with_list_device_id"]
    assert lane.main(["--exceptions", str(listed), *args]) == 1
    assert f"PASSES, BUT LISTED: {test}" in capsys.readouterr().out
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert lane.main(["--exceptions", str(empty), *args]) == 0
    assert "lane: OK" in capsys.readouterr().out
