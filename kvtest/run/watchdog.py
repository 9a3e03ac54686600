"""Ending a test body whose peers are gone while it is busy with something long and local.

A role notices a dead peer or a partition in its store waits (:meth:`RunStore.wait`). A test body
inside a long local operation (a nightly-sized copy_blocks, a big transfer) makes no store call for
as long as that takes, so a cut landing then was only noticed after it: measured with dead-after
5 s, d0 ended 15-18 s and p0 20-22 s after the cut. The watchdog thread asks ``check`` every
``interval`` seconds while a test body runs (between :meth:`arm` and :meth:`disarm`); when it returns
an exception, that exception is raised in the test's thread at its next Python instruction
(``PyThreadState_SetAsyncExc``). A native call that never returns to Python (one long device
copy) still runs to its end: the exception lands right after it.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable

__all__ = ["Watchdog"]


def _raise_in(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Make ``thread_id`` raise ``exc_type`` at its next instruction (None: take a pending one back)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type is not None else None
    )


def _carrier(exc: BaseException) -> type[BaseException]:
    """A subclass of ``exc``'s type whose instances, made without arguments, say what ``exc`` says
    (an asynchronous exception is raised from its type)."""
    base = type(exc)

    def init(self: BaseException) -> None:
        BaseException.__init__(self, *exc.args)
        self.__dict__.update(exc.__dict__)

    return type(base.__name__, (base,), {"__init__": init, "__module__": base.__module__})


class Watchdog:
    """A daemon thread that raises ``check()``'s exception in the armed test thread."""

    def __init__(self, check: Callable[[], BaseException | None], interval: float = 0.5) -> None:
        self._check = check
        self._interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._target: int | None = None
        self._pending = False
        #: the exception raised in the test thread since the last :meth:`arm`, if any
        self.fired: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kvtest-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def arm(self) -> None:
        """From the test's thread, as its body starts."""
        with self._lock:
            self._target = threading.get_ident()
            self._pending = False
            self.fired = None

    def disarm(self) -> None:
        """From the test's thread, as its body ends; an exception not raised yet is taken back."""
        with self._lock:
            if self._pending and self._target is not None:
                _raise_in(self._target, None)
            self._target = None
            self._pending = False

    def stop(self) -> None:
        """Stop watching; wait for a check in progress (it may be inside the store)."""
        self._stop.set()
        self.disarm()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self._interval + 2)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._target is None or self.fired is not None:
                continue
            try:
                exc = self._check()
            except Exception:  # a check that cannot tell leaves the waits in the test to report
                continue
            if exc is None:
                continue
            self._fire(exc)

    def _fire(self, exc: BaseException) -> None:
        with self._lock:
            target = self._target
            if target is None or self.fired is not None:  # disarmed meanwhile
                return
            self.fired = exc
            self._pending = True
            _raise_in(target, _carrier(exc))
