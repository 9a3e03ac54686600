"""``--kv-artifacts DIR``: every role's own JUnit XML and log in ``DIR/<run id>/<role>/``.

A role learns its run id late: p0 makes it when the session starts, a follower reads it from the
rendezvous when it joins, both after pytest's junitxml plugin fixed its file at configure. So each role
writes into ``DIR/.pending/`` first (pytest's JUnit XML, when the user named none, and the log). As
soon as it knows the run id it moves the log into its folder and points pytest's JUnit writer there;
a JUnit XML written elsewhere (``--junitxml``, or no run id) is copied or moved in at unconfigure.

A role that dies leaves what it had: the log is written line by line and sits in its folder from the
moment the run id is known, and the folder holds a placeholder ``junit.xml`` (one error naming the
role) until pytest's own report replaces it, so a killed role still leaves a valid JUnit XML that says
it did not finish. A role that never learns a run id (it never joined) files its folder under
``--run-id`` when given, else ``no-run-<time>-<pid>``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Generator
from pathlib import Path
from typing import IO, Any

import pytest

from kvtest.results.results import write_atomically

__all__ = ["JUNIT", "LOG", "PENDING", "RESULTS", "RoleArtifacts", "placeholder_junit"]

JUNIT = "junit.xml"
LOG = "kvtest.log"
RESULTS = "results.json"
PENDING = ".pending"


def placeholder_junit(role: str, message: str) -> str:
    """A valid JUnit XML document with one error: what a role's folder holds until pytest's report."""
    suites = ET.Element("testsuites")
    suite = ET.SubElement(
        suites, "testsuite", name=f"kvtest {role}", tests="1", errors="1", failures="0", skipped="0"
    )
    case = ET.SubElement(suite, "testcase", classname="kvtest", name=role, time="0")
    ET.SubElement(case, "error", message=message)
    return '<?xml version="1.0" encoding="utf-8"?>' + ET.tostring(suites, encoding="unicode") + "\n"


class RoleArtifacts:
    """One role's files under ``--kv-artifacts``; a pytest plugin registered by the session."""

    def __init__(self, config: pytest.Config, root: Path, role: str, run_id: str | None = None) -> None:
        self.root = root
        self.role = role
        self.given_run_id = run_id
        self.run_id: str | None = None
        self.folder: Path | None = None
        self.session: pytest.Session | None = None
        tag = f"{role}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        pending = root / PENDING
        self._log_path = pending / f"{tag}.log"
        self._lock = threading.Lock()  # the heartbeat thread writes too (a peer's warnings)
        self._log: IO[str] | None = None
        for _ in range(3):  # another role that just finished may remove the shared .pending between the two
            pending.mkdir(parents=True, exist_ok=True)
            try:
                self._log = self._log_path.open("a", encoding="utf-8", buffering=1)
                break
            except FileNotFoundError:
                continue
        # pytest's junitxml plugin reads its path in its own pytest_configure, after kvtest's (tryfirst)
        self.config = config
        self.user_junit: Path | None = None
        self._staged_junit: Path | None = None
        if hasattr(config, "workerinput"):
            return  # (xdist: the controller writes the JUnit XML)
        if config.option.xmlpath:
            self.user_junit = Path(os.path.abspath(os.path.expanduser(config.option.xmlpath)))
        else:
            self._staged_junit = pending / f"{tag}.xml"
            config.option.xmlpath = str(self._staged_junit)

    # -- the folder -------------------------------------------------------------------------------

    def results_path(self, run_id: str) -> Path:
        """Where p0 writes the results file when ``--kv-results`` names none."""
        return self.root / run_id / RESULTS

    def begin(self, run_id: str, redirect: bool = True) -> Path:
        """Take this role's folder in ``run_id`` and move the log there; return the folder.

        The folder is made with ``mkdir``, never reused: a second process started as the same role
        (refused at the handshake) gets ``<role>-2`` instead of overwriting the first one's files.
        """
        if self.folder is not None:
            return self.folder
        base = self.root / run_id
        base.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            folder = base / (self.role if n == 1 else f"{self.role}-{n}")
            try:
                folder.mkdir()
                break
            except FileExistsError:
                n += 1
        self.run_id, self.folder = run_id, folder
        write_atomically(
            folder / JUNIT,
            placeholder_junit(
                self.role,
                f"{self.role} did not finish its session (killed, or stopped before pytest wrote its "
                f"report); see {LOG} in this folder",
            ),
        )
        with self._lock:
            if self._log is not None:
                os.replace(self._log_path, folder / LOG)  # the open file moves with its name
                self._log_path = folder / LOG
        if redirect:
            self._redirect_junit(folder / JUNIT)
        return folder

    def _redirect_junit(self, path: Path) -> None:
        """Point pytest's JUnit writer at ``path`` itself, so its "generated xml file" line names where
        the file is. Its object is found under ``_pytest.junitxml.xml_key`` (pytest 7 to 9); without
        it the staged file is moved there at unconfigure all the same."""
        if self._staged_junit is None:
            return
        try:
            from _pytest.junitxml import xml_key
        except ImportError:
            return
        writer = self.config.stash.get(xml_key, None)
        if writer is not None and isinstance(getattr(writer, "logfile", None), str):
            writer.logfile = str(path)
            self._staged_junit = None

    def write(self, line: str) -> None:
        """One line of the log, stamped with the time; written through at once."""
        stamp = time.strftime("%H:%M:%S")
        with self._lock:
            if self._log is not None:
                self._log.writelines(f"{stamp} {part}\n" for part in line.splitlines() or [""])

    def _text(self, text: str, indent: str = "    ") -> None:
        with self._lock:
            if self._log is not None and text:
                self._log.writelines(f"{indent}{part}\n" for part in text.rstrip().splitlines())

    # -- hooks ------------------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        try:
            return (yield)
        except BaseException as exc:
            text = str(getattr(exc, "msg", None) or exc or type(exc).__name__).removeprefix("kvtest: ")
            self.write(f"kvtest: {self.role} stopped: {text}")
            raise

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.write(f"collection error in {report.nodeid or '.'}")
            self._text(str(report.longrepr))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and report.passed:
            return
        if report.when == "setup" and report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longreprtext
            self.write(f"{report.nodeid} SKIPPED: {reason}")
            return
        phase = "" if report.when == "call" else f" at {report.when}"
        outcome = "ERROR" if report.when != "call" and report.failed else report.outcome.upper()
        self.write(f"{report.nodeid} {outcome}{phase} ({report.duration:.2f}s)")
        if report.failed:
            self._text(report.longreprtext)
        elif report.skipped and isinstance(report.longrepr, tuple):
            self._text(str(report.longrepr[2]))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        where = self.folder or self.root / (self.given_run_id or "<run id>") / self.role
        terminalreporter.write_line(f"kvtest: {self.role}'s JUnit XML and log are in {where}")

    @pytest.hookimpl(tryfirst=True)
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """Move pytest's JUnit XML into the folder and close the log (before a role that lost its peers
        leaves with ``os._exit``, which is the session's last unconfigure)."""
        folder = self.folder or self.begin(
            self.given_run_id or f"no-run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}", redirect=False
        )
        status = getattr(self.session, "exitstatus", None) if self.session is not None else None
        if status is not None:
            self.write(f"kvtest: {self.role} finished with exit status {int(status)}")
        staged, user = self._staged_junit, self.user_junit
        if staged is not None and staged.exists():
            os.replace(staged, folder / JUNIT)
        elif user is not None and user.exists():
            write_atomically(folder / JUNIT, user.read_text(encoding="utf-8"))
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None
        try:
            (self.root / PENDING).rmdir()  # only when no other role still has files there
        except OSError:
            pass
