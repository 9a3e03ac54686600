"""Run several commands as one group, as the vendor's ``examples/run_example.sh`` runs a P/D pair.

Every command starts at once, in its own process group, with its output logged (and optionally
echoed with a ``[role]`` prefix). The group fails as soon as one command exits non-zero or prints
a line matching ``fail_on`` (the vendor's convention is ``grep -qi ERROR``), and then every other
command is stopped. A deadline bounds the whole group; the commands still running at the deadline
are named as the ones that hung. Unlike run_example.sh, which waits for every command and greps the
logs at the end, a failure here stops the rest at once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

#: the vendor samples' pass/fail convention: run_example.sh fails the pair when `grep -qi "ERROR"` matches
DEFAULT_FAIL_ON = "(?i)ERROR"
#: how long a stopped command gets between SIGTERM and SIGKILL
STOP_GRACE_S = 2.0
#: after the first failure, how long to wait for an earlier cause (a crash seen by its peer first)
SETTLE_S = 0.3


@dataclass
class Member:
    """One command of the group and what became of it."""

    role: str
    command: str
    env: Mapping[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    matched: str | None = None  # the first line that matched fail_on
    matched_at: float | None = None
    exited_at: float | None = None  # when the process ended (a waiter thread records it)
    stopped: bool = False
    reader: threading.Thread | None = None
    logfile: IO[bytes] | None = None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def describe_exit(self) -> str:
        code = self.returncode
        if code is None:
            return "still running"
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"


@dataclass
class Outcome:
    """How the group ended: ``ok`` only when every command exited 0 and none printed a failing line."""

    ok: bool
    summary: str
    members: list[Member] = field(default_factory=list)
    seconds: float = 0.0


def _quote(command: str) -> str:
    return f"`{' '.join(command.split())}`"


class Group:
    """Start, watch and stop the commands; :meth:`run` returns the :class:`Outcome`."""

    def __init__(
        self,
        members: Sequence[Member],
        *,
        timeout: float,
        fail_on: str | None = DEFAULT_FAIL_ON,
        echo: Callable[[str], None] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.members = list(members)
        self.timeout = timeout
        self.pattern = re.compile(fail_on) if fail_on else None
        self.echo = echo
        self.cwd = cwd

    def _read(self, member: Member, stream: IO[bytes], log: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            log.write(raw)
            log.flush()
            line = raw.decode(errors="replace").rstrip("\n")
            if self.echo is not None:
                self.echo(f"[{member.role}] {line}")
            if self.pattern is not None and member.matched is None and self.pattern.search(line):
                member.matched_at = time.monotonic()
                member.matched = line.strip()
        stream.close()

    @staticmethod
    def _wait(member: Member) -> None:
        assert member.proc is not None
        member.proc.wait()
        member.exited_at = time.monotonic()

    def _start(self) -> None:
        for member in self.members:
            member.log.parent.mkdir(parents=True, exist_ok=True)
            log = member.log.open("wb")
            member.proc = subprocess.Popen(
                member.command,
                shell=True,
                env=dict(member.env),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            assert member.proc.stdout is not None
            member.reader = threading.Thread(
                target=self._read, args=(member, member.proc.stdout, log), daemon=True
            )
            member.logfile = log
            member.reader.start()
            threading.Thread(target=self._wait, args=(member,), daemon=True).start()

    def _stop(self, members: Sequence[Member]) -> None:
        live = [m for m in members if m.proc is not None and m.proc.poll() is None]
        for member in live:
            member.stopped = True
            self._signal(member, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for member in live:
            assert member.proc is not None
            try:
                member.proc.wait(timeout=max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(member, signal.SIGKILL)
                member.proc.wait(timeout=10)

    @staticmethod
    def _signal(member: Member, sig: signal.Signals) -> None:
        assert member.proc is not None
        try:
            os.killpg(member.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _failure(self) -> tuple[Member, str] | None:
        """The failure that came first: a line matching ``fail_on`` or a non-zero exit.

        A crash makes its peers print errors (gloo's "Connection reset by peer") within moments, and
        the crashed process's exit is noticed a little later than their lines; so within
        :data:`SETTLE_S` of the first event, a command that exited non-zero is the cause.
        """
        lines: list[tuple[float, Member]] = []
        exits: list[tuple[float, Member]] = []
        for member in self.members:
            if member.matched is not None and member.matched_at is not None:
                lines.append((member.matched_at, member))
            code = member.returncode
            if code is not None and code != 0 and not member.stopped:
                exits.append((member.exited_at or time.monotonic(), member))
        if not lines and not exits:
            return None
        first = min(t for t, _ in lines + exits)
        early_exits = [(t, m) for t, m in exits if t <= first + SETTLE_S]
        _, member = min(early_exits or lines, key=lambda e: e[0])
        if member.matched is not None and self.pattern is not None:
            return member, f"printed a line matching {self.pattern.pattern!r}: {member.matched}"
        return member, member.describe_exit()

    def run(self) -> Outcome:
        started = time.monotonic()
        deadline = started + self.timeout
        self._start()
        failure: tuple[Member, str] | None = None
        hung: list[Member] = []
        try:
            while True:
                failure = self._failure()
                if failure is not None:
                    time.sleep(SETTLE_S)
                    failure = self._failure()
                    break
                if all(m.returncode is not None for m in self.members):
                    break
                if time.monotonic() >= deadline:
                    hung = [m for m in self.members if m.returncode is None]
                    break
                time.sleep(0.05)
        finally:
            self._stop(self.members)
            for member in self.members:
                if member.reader is not None:
                    member.reader.join(timeout=5)
                if member.logfile is not None:
                    member.logfile.close()
        if failure is None and not hung:
            failure = self._failure()  # a line that matched while the last command was ending
        seconds = time.monotonic() - started
        if hung:
            names = ", ".join(f"{m.role} {_quote(m.command)}" for m in hung)
            summary = f"deadline of {self.timeout:g}s passed; still running (hung): {names}"
            return Outcome(False, summary, self.members, seconds)
        if failure is not None:
            member, how = failure
            others = [m for m in self.members if m is not member]
            stopped = [m.role for m in others if m.stopped]
            ended = [f"{m.role} exited with code {m.returncode}" for m in others if not m.stopped]
            tail = f"; stopped {', '.join(stopped)}" if stopped else ""
            tail += f"; {', '.join(ended)} before it could be stopped" if ended else ""
            summary = f"{member.role} {_quote(member.command)} failed: {how} (log: {member.log}){tail}"
            return Outcome(False, summary, self.members, seconds)
        return Outcome(True, f"all {len(self.members)} commands passed", self.members, seconds)
