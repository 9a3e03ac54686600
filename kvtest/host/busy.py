"""Host-wide signs of work that background work must step aside for: a transfer being timed, or a
role whose tests come first touching its memory ahead.

Each sign is a file per user in the temp directory. The work holds a shared ``flock`` on it while it
runs (:func:`busy`); background work takes the exclusive lock on each sign it respects (:func:`aside`),
so it pauses while any process on the host holds one. The kernel drops a dead process's ``flock``: a
role that crashed mid-transfer leaves nothing held.

Neither side waits long. Background work takes a sign exclusively for one step at a time (at most
:data:`kvtest.host.reused_memory.PREFAULT_STEP`): a timed transfer that finds it so goes on at once, and
a first role's touching waits at most its ``wait`` for it. Background work waits at most its
``deadline`` before each step, then goes on all the same.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows: nothing steps aside there
    fcntl = None  # type: ignore[assignment]

__all__ = ["FIRST_TOUCH", "FOLDER", "POLL_MAX_S", "POLL_S", "TIMING", "aside", "busy", "later_touch", "path"]

#: a process is timing a transfer (``TransferLog.measure``)
TIMING = "timing"
#: a role whose tests come first is touching its device memory ahead (``reused_memory.prefault``)
FIRST_TOUCH = "first-touch"


def later_touch(rank: int) -> str:
    """The sign of a role whose tests come later touching its memory ahead, ``rank`` roles of that kind
    needing theirs before it (:func:`kvtest.run.touch_ahead.touches_after`)."""
    return f"later-touch-{rank}"


#: background work looks again whether the work it waits for has stopped after this pause, doubled
#: each time up to POLL_MAX_S
POLL_S = 0.002
POLL_MAX_S = 0.05

_HAVE_FLOCK = fcntl is not None
#: where the signs live (a test points it at its own folder)
FOLDER = Path(tempfile.gettempdir())


def path(sign: str) -> Path:
    """The file of ``sign`` on this host, for this user."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return FOLDER / f"kvtest-{sign}-{uid}.lock"


def _open(sign: str) -> int | None:
    if not _HAVE_FLOCK:
        return None
    try:
        # not through a link another user left under that name in a shared temp directory
        return os.open(path(sign), os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError:  # an unwritable temp directory, or such a link: nothing steps aside
        return None


def _until(attempt: Callable[[], bool], deadline: float) -> bool:
    """Call ``attempt`` until it succeeds or ``deadline`` seconds have passed (pauses doubling from
    POLL_S up to POLL_MAX_S between calls); whether it succeeded."""
    end = time.monotonic() + deadline
    pause = POLL_S
    while not attempt():
        if time.monotonic() >= end:
            return False
        time.sleep(pause)
        pause = min(2 * pause, POLL_MAX_S)
    return True


def _take(fds: list[int], how: int) -> bool:
    """``flock`` every one of ``fds`` without waiting; on the first refusal, release the ones taken."""
    for i, fd in enumerate(fds):
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
        except OSError:
            for taken in fds[:i]:
                fcntl.flock(taken, fcntl.LOCK_UN)
            return False
    return True


@contextmanager
def busy(sign: str, wait: float = 0.0) -> Iterator[None]:
    """Hold ``sign`` (shared with any other holder) while the body runs. Background work holds it
    exclusively for one step at a time: the body waits at most ``wait`` seconds for that step, then
    runs all the same (a timed transfer never waits; work that holds it for long does)."""
    fd = _open(sign)  # an open file of its own: locks on separate open files conflict, in one process too
    try:
        if fd is not None:
            _until(lambda: _take([fd], fcntl.LOCK_SH), wait)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing drops the lock


@contextmanager
def aside(signs: tuple[str, ...], deadline: float) -> Iterator[bool]:
    """For background work: wait (at most ``deadline`` seconds) until no process on the host holds
    any of ``signs``, and hold them all exclusively while the body runs; yields whether it got them.

    It never holds one sign while it waits for another: other background work that waits only for the
    first must not wait behind it.
    """
    with ExitStack() as opened:
        fds = []
        for sign in signs:
            fd = _open(sign)
            if fd is not None:
                opened.callback(os.close, fd)  # closing drops the lock
                fds.append(fd)
        yield _until(lambda: _take(fds, fcntl.LOCK_EX), deadline)
