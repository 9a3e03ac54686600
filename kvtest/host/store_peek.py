"""A read of a torch.distributed store in one round trip.

``check`` then ``get`` costs a TCPStore three round trips (its ``get`` waits for the key first), about
0.3 ms on the project's VM, and a test reads dozens of records. ``compare_set`` with an expected value
no record ever holds answers in one: a present key's value comes back unchanged, and a missing key
stays missing while the expected value comes back (``compareSet`` of torch's TCPStore, FileStore and
HashStore alike; ``tests/harness/test_store_peek.py`` holds every store kvtest uses to it).

Only a stranger writes :data:`ABSENT` itself: a peek then sees no record, and a rendezvous wait, which
finds the key there, refuses it as unsigned (``RunStore.wait``).

A peek of a missing key wakes that key's waiters on the libuv TCPStore (the default server since torch
2.4, torchrun's agent store among them): its ``compareSet`` wakes them whether or not the key exists.
A ``wait`` that returns is therefore no proof the key is there; read it, and wait again when it is not.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ABSENT", "peek"]

#: the expected value of a peek: kvtest stores JSON (or base64), which never starts with a NUL byte
ABSENT = "\x00kvtest:absent"
_ABSENT_BYTES = ABSENT.encode()


def peek(store: Any, key: str) -> bytes | None:
    """The value under ``key`` now, or None when there is none; never blocks, never writes."""
    got = store.compare_set(key, ABSENT, ABSENT)
    return None if got == _ABSENT_BYTES else bytes(got)
