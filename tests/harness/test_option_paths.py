"""An option value given after a space that names an existing path outside the project made pytest look
for its rootdir there (pytest-dev/pytest#8846): the second run with one results file lost the project's
pytest.ini and collected kvtest's harness. kvtest refuses such a run in one line, with the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_TEST = """
import pytest

@pytest.mark.project_marker
def test_one():
    pass
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\nmarkers =\n    project_marker: the project's own\naddopts = --strict-markers\n")
    pytester.makepyfile(test_project=PROJECT_TEST)
    return pytester


def _outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("elsewhere") / "nightly.json"
    results.write_text("{}")  # a results file from an earlier run
    return results


def test_an_existing_results_file_outside_the_project_is_refused_with_the_fix(
    project: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    results = _outside(tmp_path_factory)
    ran = project.runpytest_subprocess("--collect-only", "-q", "--kv-results", str(results))
    assert ran.ret == pytest.ExitCode.USAGE_ERROR, ran.stdout.str() + ran.stderr.str()
    ran.stderr.fnmatch_lines([
        f"ERROR: kvtest: --kv-results {results} (command line): pytest took this existing path for a "
        f"place to look for its rootdir and ran from *, without the project's "
        f"configuration (pytest-dev/pytest#8846); write --kv-results={results}"
    ])


@pytest.mark.parametrize("how", ["with =", "inside the project", "an explicit --rootdir", "not there yet"])
def test_a_value_that_moves_no_rootdir_passes(
    project: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, how: str
) -> None:
    outside = _outside(tmp_path_factory)
    args = {
        "with =": [f"--kv-results={outside}"],
        "inside the project": ["--kv-results", str(project.path / "test_project.py")],
        "an explicit --rootdir": ["--kv-results", str(outside), "--rootdir", str(project.path)],
        "not there yet": ["--kv-results", str(outside.parent / "new.json")],
    }[how]
    ran = project.runpytest_subprocess("--collect-only", "-q", *args)
    assert ran.ret == pytest.ExitCode.OK, ran.stdout.str() + ran.stderr.str()
    ran.stdout.fnmatch_lines(["test_project.py::test_one"])
