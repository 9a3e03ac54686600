"""The upstream llm_datadist unit tests as a lane: hicann/hixl's ``tests/python``, unmodified, on the sim.

``python -m kvtest.dropin.upstream_unittests`` extracts the test files from the pinned archive into a
temporary folder (never into the checkout), runs them with pytest under ``kvtest run`` (so
``import llm_datadist`` finds kvtest's shims), and compares every test's outcome with the list of
expected failures in ``tests/upstream/unittest_exceptions.txt``: an unlisted test that fails, a
listed test that passes, and a listed test that no longer exists each fail the lane.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kvtest.upstream.archives import DEFAULT_SOURCES
from kvtest.upstream.archives import ENV_SOURCES as SOURCES_VAR

ARCHIVE = "hixl-9ed283b.tar.gz"
#: the llm_datadist test files of hicann/hixl tests/python (test_hixl_engine_api.py tests the hixl
#: module, test_log*.py the logger's caller lookup: neither is llm_datadist's API)
TEST_FILES = (
    "test_cache_manager.py",
    "test_cache_manager_ex.py",
    "test_configs.py",
    "test_enable_local_comm_res.py",
    "test_llm_datadist_coverage.py",
    "test_remote_cache_accessible.py",
    "test_utils.py",
)
EXCEPTIONS_FILE = Path(__file__).resolve().parents[2] / "tests" / "upstream" / "unittest_exceptions.txt"


class LaneError(Exception):
    """The lane could not run (archive missing, bad exceptions file); the message says what to fix."""


@dataclass
class Verdict:
    """The lane's judgement of one run: which outcomes disagree with the list of exceptions."""

    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unexpected_failures: list[str] = field(default_factory=list)
    unexpected_passes: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unexpected_failures or self.unexpected_passes or self.stale)


def parse_exceptions(text: str, source: str = "the list") -> dict[str, str]:
    """``{test id: reason}`` from lines ``<file>::<Class>::<test> <reason>`` (``#`` starts a comment)."""
    reasons: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        test_id, _, reason = line.partition(" ")
        if not reason.strip():
            raise LaneError(
                f"{source}:{number}: {test_id} needs a reason after it, saying why it fails on the sim"
            )
        if test_id in reasons:
            raise LaneError(f"{source}:{number}: {test_id} is listed twice")
        reasons[test_id] = reason.strip()
    return reasons


def load_exceptions(path: Path = EXCEPTIONS_FILE) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise LaneError(f"cannot read the list of exceptions {path}: {exc}") from None
    return parse_exceptions(text, str(path))


def outcomes_from_junit(xml_text: str) -> dict[str, bool]:
    """``{file::Class::test: passed}`` from pytest's JUnit XML; a collection error fails the file."""
    outcomes: dict[str, bool] = {}
    for case in ET.fromstring(xml_text).iter("testcase"):
        classname = case.get("classname", "")
        name = case.get("name", "")
        if classname:
            module, _, cls = classname.rpartition(".")
            test_id = f"{module.rpartition('.')[2]}.py::{cls}::{name}"
        else:  # a file that failed to import: pytest reports the module (python.test_x) as the test
            test_id = f"{name.rpartition('.')[2]}.py"
        bad = any(case.find(tag) is not None for tag in ("failure", "error"))
        skipped = case.find("skipped") is not None
        outcomes[test_id] = not bad and not skipped
    return outcomes


def judge(outcomes: Mapping[str, bool], exceptions: Mapping[str, str]) -> Verdict:
    """Compare the run's outcomes with the list: every listed test must fail and every other pass."""
    verdict = Verdict()
    for test_id, passed in sorted(outcomes.items()):
        (verdict.passed if passed else verdict.failed).append(test_id)
        if passed and test_id in exceptions:
            verdict.unexpected_passes.append(test_id)
        elif not passed and test_id not in exceptions:
            verdict.unexpected_failures.append(test_id)
    verdict.stale = sorted(set(exceptions) - set(outcomes))
    return verdict


def report(verdict: Verdict, exceptions: Mapping[str, str]) -> str:
    total = len(verdict.passed) + len(verdict.failed)
    lines = [
        f"upstream unit tests on sim: {len(verdict.passed)} of {total} pass, "
        f"{len(verdict.failed)} fail ({len(exceptions)} listed as expected failures)"
    ]
    for test_id in verdict.unexpected_failures:
        lines.append(
            f"FAILS, NOT LISTED: {test_id} (fix the sim, or list it and why in {EXCEPTIONS_FILE.name})"
        )
    for test_id in verdict.unexpected_passes:
        lines.append(f"PASSES, BUT LISTED: {test_id} (remove it from {EXCEPTIONS_FILE.name})")
    for test_id in verdict.stale:
        lines.append(
            f"LISTED, NOT RUN: {test_id} (no such test any more: remove it from {EXCEPTIONS_FILE.name})"
        )
    lines.append("lane: OK" if verdict.ok else "lane: FAILED")
    return "\n".join(lines)


def find_archive(sources: Path | None) -> Path:
    folder = sources or Path(os.environ.get(SOURCES_VAR) or DEFAULT_SOURCES)
    archive = folder / ARCHIVE
    if not archive.is_file():
        raise LaneError(
            f"{archive} not found: name the folder holding {ARCHIVE} with --sources DIR or {SOURCES_VAR}"
        )
    return archive


def extract_tests(archive: Path, dest: Path, files: Sequence[str] = TEST_FILES) -> list[Path]:
    """Copy ``tests/python/<files>`` (and its ``__init__.py``) out of the archive into ``dest/python``."""
    wanted = {*files, "__init__.py"}
    out = dest / "python"
    out.mkdir(parents=True, exist_ok=True)
    found: list[Path] = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if (
                len(parts) >= 3
                and parts[-3:-1] == ("tests", "python")
                and parts[-1] in wanted
                and member.isfile()
            ):
                source = tar.extractfile(member)
                if source is None:
                    continue
                target = out / parts[-1]
                target.write_bytes(source.read())
                if parts[-1] != "__init__.py":
                    found.append(target)
    missing = sorted(set(files) - {p.name for p in found})
    if missing:
        raise LaneError(f"{archive} has no tests/python/{', '.join(missing)}")
    return sorted(found)


def run_tests(workdir: Path, test_files: Sequence[Path], timeout_s: float, pytest_args: Sequence[str]) -> str:
    """Run the files with pytest under ``kvtest run`` (the sim and its shims); the JUnit XML it wrote."""
    junit = workdir / "junit.xml"
    pytest_cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "--continue-on-collection-errors",
        f"--junitxml={junit}",
        *pytest_args,
        *(str(p.relative_to(workdir)) for p in test_files),
    ]
    cmd = [
        sys.executable,
        "-m",
        "kvtest.cli",
        "run",
        "--backend",
        "sim",
        "--roles",
        "p0",
        "--fail-on",
        "",
        "--timeout",
        str(timeout_s),
        "--logs",
        str(workdir / "logs"),
        shlex.join(pytest_cmd),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")) if p
    )
    subprocess.run(cmd, cwd=workdir, env=env, check=False)
    if not junit.is_file():
        raise LaneError(f"pytest wrote no results ({junit}); see the log under {workdir / 'logs'}")
    return junit.read_text()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvtest.dropin.upstream_unittests", description=__doc__)
    parser.add_argument(
        "--sources", type=Path, help=f"folder holding {ARCHIVE} (default ${SOURCES_VAR} or {DEFAULT_SOURCES})"
    )
    parser.add_argument(
        "--exceptions", type=Path, default=EXCEPTIONS_FILE, help="the list of expected failures"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds the whole run may take (default 600)"
    )
    parser.add_argument(
        "--keep", type=Path, help="extract and run in this folder (outside the checkout) and keep it"
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    try:
        exceptions = load_exceptions(args.exceptions)
        archive = find_archive(args.sources)
        with tempfile.TemporaryDirectory(prefix="kvtest-upstream-unittests-") as tmp:
            workdir = args.keep.resolve() if args.keep else Path(tmp)
            files = extract_tests(archive, workdir)
            outcomes = outcomes_from_junit(run_tests(workdir, files, args.timeout, args.pytest_args))
    except LaneError as exc:
        print(f"upstream-unittests: {exc}", file=sys.stderr)
        return 2
    verdict = judge(outcomes, exceptions)
    print(report(verdict, exceptions))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
