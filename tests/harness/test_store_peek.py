"""kvtest.host.store_peek: one round trip reads a record or says there is none, on every store kvtest
uses, and writes nothing (it relies on torch's compareSet answering a missing key so)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist

from kvtest.host.store_peek import ABSENT, peek

KINDS = ["tcp-libuv", "tcp-legacy", "tcp-client", "file", "hash", "prefix"]


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dist.Store]:
    timeout = timedelta(seconds=5)
    kind = request.param
    if kind == "file":
        yield dist.FileStore(str(tmp_path / "store"), 1)
    elif kind == "hash":
        yield dist.HashStore()
    else:
        host = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timeout, use_libuv=kind != "tcp-legacy")
        if kind in ("tcp-libuv", "tcp-legacy"):
            yield host
        else:
            client = dist.TCPStore("127.0.0.1", host.port, is_master=False, timeout=timeout)
            yield client if kind == "tcp-client" else dist.PrefixStore("run/", client)
        del host


def test_a_missing_key_is_none_and_stays_missing(store: dist.Store) -> None:
    assert peek(store, "nothing") is None
    assert not store.check(["nothing"])
    store.set("nothing", "now")
    assert peek(store, "nothing") == b"now"


def test_a_present_value_comes_back_unchanged(store: dist.Store) -> None:
    for value in ("{\"a\": 1}", "", "\x00kvtest", "x" * 100_000):
        store.set("k", value)
        assert peek(store, "k") == value.encode()
        assert store.get("k") == value.encode()


def test_the_expected_value_is_never_json() -> None:
    assert ABSENT.startswith("\x00")


def test_a_peek_of_a_missing_key_may_wake_its_waiters_on_a_libuv_store() -> None:
    """Why RunStore.wait reads after every wake-up: the libuv TCPStore (torchrun's agent store) wakes a
    key's waiters on any compareSet of it, the key missing or not. Should torch stop doing so, this
    fails and the note in kvtest.host.store_peek can go."""
    import threading
    import time

    host = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=5), use_libuv=True)
    waiter = dist.TCPStore("127.0.0.1", host.port, is_master=False, timeout=timedelta(seconds=5))
    reader = dist.TCPStore("127.0.0.1", host.port, is_master=False, timeout=timedelta(seconds=5))
    woke: list[float] = []

    def wait() -> None:
        start = time.monotonic()
        waiter.wait(["k"], timedelta(seconds=3))
        woke.append(time.monotonic() - start)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.3)
    assert peek(reader, "k") is None
    thread.join(timeout=5)
    assert woke and woke[0] < 2.5 and not waiter.check(["k"])
