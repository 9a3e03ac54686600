"""The host's busy signs (kvtest.host.busy): background work steps aside while any process times a
transfer, waits no longer than its deadline, never delays a transfer, and is not held up by a process
that died mid-transfer; a late role's touch-ahead waits while a first role touches, a first role's not."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvtest.host import busy
from kvtest.results.metrics import TransferLog


@pytest.fixture(autouse=True)
def _own_lock_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Sign files of this test's own: a kvtest run on this host must not see them, nor they the run."""
    monkeypatch.setattr(busy, "FOLDER", tmp_path)
    yield busy.path(busy.TIMING)


def test_background_work_goes_on_at_once_when_nothing_is_timed() -> None:
    start = time.monotonic()
    with busy.aside((busy.TIMING,), 5.0) as got:
        assert got
    assert time.monotonic() - start < 1.0


def test_background_work_waits_while_a_transfer_is_timed_until_its_deadline() -> None:
    log = TransferLog(role="d0")
    with log.measure("pull_blocks", 1):
        start = time.monotonic()
        with busy.aside((busy.TIMING,), 0.3) as got:
            waited = time.monotonic() - start
    assert not got
    assert waited >= 0.3


def test_background_work_goes_on_as_soon_as_the_transfer_ends() -> None:
    log = TransferLog(role="d0")
    ended = threading.Event()

    def transfer() -> None:
        with log.measure("pull_blocks", 1):
            ready.set()
            time.sleep(0.3)
        ended.set()

    ready = threading.Event()
    thread = threading.Thread(target=transfer)
    thread.start()
    ready.wait(5)
    with busy.aside((busy.TIMING,), 10.0) as got:
        assert got and ended.is_set()
    thread.join()


def test_a_transfer_never_waits_for_background_work() -> None:
    holding, release = threading.Event(), threading.Event()

    def background() -> None:
        with busy.aside((busy.TIMING,), 1.0) as got:
            assert got
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=background)
    thread.start()
    holding.wait(5)
    start = time.monotonic()
    with busy.busy(busy.TIMING):
        pass
    assert time.monotonic() - start < 0.5
    release.set()
    thread.join()


def test_a_process_that_died_mid_transfer_holds_nothing(_own_lock_file: Path) -> None:
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(_own_lock_file)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_SH)\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with busy.aside((busy.TIMING,), 0.2) as got:
            assert not got  # held by the living process
        proc.kill()
        proc.wait(10)
        with busy.aside((busy.TIMING,), 5.0) as got:
            assert got
    finally:
        proc.kill()
        proc.wait(10)


def test_a_late_roles_touching_waits_while_a_first_role_touches_and_not_for_itself() -> None:
    late = (busy.TIMING, busy.FIRST_TOUCH)
    with busy.busy(busy.FIRST_TOUCH):
        with busy.aside((busy.TIMING,), 1.0) as got:
            assert got  # a first role steps aside for transfers only
        start = time.monotonic()
        with busy.aside(late, 0.3) as got:
            assert not got and time.monotonic() - start >= 0.3
    with busy.aside(late, 1.0) as got:
        assert got


def test_a_later_role_steps_aside_for_the_later_roles_needed_before_it_only() -> None:
    second = (busy.TIMING, busy.FIRST_TOUCH, busy.later_touch(0))
    with busy.busy(busy.later_touch(0)):
        with busy.aside((busy.TIMING, busy.FIRST_TOUCH), 1.0) as got:
            assert got  # the role needed first does not wait for its own sign
        start = time.monotonic()
        with busy.aside(second, 0.3) as got:
            assert not got and time.monotonic() - start >= 0.3
    with busy.busy(busy.later_touch(1)):  # a role needed after it touches: no reason to wait
        with busy.aside(second, 1.0) as got:
            assert got


def test_a_first_role_waits_for_a_late_roles_step_then_holds_its_sign() -> None:
    step_held, release = threading.Event(), threading.Event()

    def late_step() -> None:
        with busy.aside((busy.FIRST_TOUCH,), 1.0):
            step_held.set()
            release.wait(10)

    thread = threading.Thread(target=late_step)
    thread.start()
    step_held.wait(5)
    threading.Timer(0.2, release.set).start()
    with busy.busy(busy.FIRST_TOUCH, wait=5.0):
        thread.join()
        with busy.aside((busy.FIRST_TOUCH,), 0.1) as got:
            assert not got  # it got its sign once the step ended, and holds it



def test_background_work_waiting_for_one_sign_holds_no_other() -> None:
    """A late role's step waiting for a first role's touching must not hold the timing sign: the
    first role's own steps (which wait for transfers only) would wait behind it."""
    waiting, done = threading.Event(), threading.Event()

    def late_step() -> None:
        waiting.set()
        with busy.aside((busy.TIMING, busy.FIRST_TOUCH), 2.0):
            pass
        done.set()

    with busy.busy(busy.FIRST_TOUCH):
        thread = threading.Thread(target=late_step)
        thread.start()
        waiting.wait(5)
        time.sleep(0.05)
        start = time.monotonic()
        with busy.aside((busy.TIMING,), 1.0) as got:
            assert got and time.monotonic() - start < 0.5
        assert not done.is_set()
    thread.join(10)
    assert done.is_set()


def test_a_link_under_the_signs_name_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "someone-elses-file"
    target.write_text("keep")
    busy.path(busy.TIMING).symlink_to(target)
    with busy.busy(busy.TIMING), busy.aside((busy.TIMING,), 0.1) as got:
        assert got  # the sign could not be opened: nothing steps aside, nothing waits
    assert target.read_text() == "keep"
