"""The watchdog raises a lost peer in a test thread busy with something long and local."""

from __future__ import annotations

import threading
import time

import pytest

from kvtest.run.rendezvous import PeerDead
from kvtest.run.watchdog import Watchdog


def test_a_busy_body_gets_the_peers_death_at_once():
    gone = threading.Event()
    dog = Watchdog(lambda: PeerDead("d0", "no heartbeat for 5.1s", "copy_blocks") if gone.is_set() else None,
                   interval=0.05).start()
    dog.arm()
    began = time.monotonic()
    with pytest.raises(PeerDead, match=r"^peer d0 died at step 'copy_blocks': no heartbeat for 5\.1s$") as raised:
        gone.set()
        while time.monotonic() - began < 60:  # a long local operation, in Python
            sum(range(1000))
    dog.disarm()
    dog.stop()
    assert raised.value.role == "d0" and raised.value.step == "copy_blocks"
    assert time.monotonic() - began < 30, "raised within a few intervals, not at the end of the work"


def test_nothing_is_raised_unless_armed():
    checks: list[float] = []

    def lost() -> BaseException:
        checks.append(time.monotonic())
        return PeerDead("d0", "x")

    dog = Watchdog(lost, interval=0.02).start()
    try:
        end = time.monotonic() + 0.5
        while time.monotonic() < end:  # no test body armed it: nothing may land here
            sum(range(1000))
    finally:
        dog.stop()
    assert dog.fired is None
