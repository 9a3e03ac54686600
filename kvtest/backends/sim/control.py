"""The control plane: metadata shared through a torch.distributed store as JSON (bytes as base64).

Every key lives under ``<namespace>/sim/``. Records are never deleted: a released or removed record
is overwritten with a release marker, so a ``check`` followed by a ``get`` cannot block on a vanished key.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.distributed import Store

_RELEASED = "__released__"
_claims = itertools.count(1)


def _live(value: Any) -> Any:
    return None if isinstance(value, dict) and _RELEASED in value else value


@dataclass(frozen=True)
class ControlPlane:
    """The store, the namespace of this run and test, and this process's role name."""

    store: Store
    namespace: str
    role: str

    def key(self, *parts: object) -> str:
        return "/".join([self.namespace, "sim", *(str(p) for p in parts)])

    # -- records ------------------------------------------------------------------------------
    def put(self, key: str, value: Any) -> None:
        self.store.set(key, json.dumps(value))

    def fetch(self, key: str) -> Any:
        """The record at ``key``, or None when it is absent or released (never blocks)."""
        if not self.store.check([key]):
            return None
        return _live(json.loads(self.store.get(key)))

    def fetch_many(self, keys: list[str]) -> list[Any]:
        present = [k for k in keys if self.store.check([k])]
        values = dict(zip(present, self.store.multi_get(present))) if present else {}
        return [_live(json.loads(values[k])) if k in values else None for k in keys]

    def release(self, key: str, expected: Any) -> bool:
        """Atomically mark the record ``expected`` at ``key`` released; False when it changed first."""
        marker = json.dumps({_RELEASED: f"{os.getpid()}-{next(_claims)}"})
        return bool(self.store.compare_set(key, json.dumps(expected), marker).decode() == marker)

    def update(self, key: str, change: Callable[[Any], Any]) -> Any:
        """Apply ``change`` to the record at ``key`` atomically (compare-and-set retry); return the result."""
        while True:
            old_text = self.store.get(key).decode() if self.store.check([key]) else ""
            new = change(json.loads(old_text) if old_text else None)
            new_text = json.dumps(new)
            if old_text == new_text:
                return new
            if self.store.compare_set(key, old_text, new_text).decode() == new_text:
                return new

    def wait_for(self, key: str, deadline: float, poll_s: float = 0.01) -> Any:
        """The record at ``key`` once present and not null; None when ``deadline`` passes first."""
        while True:
            value = self.fetch(key)
            if value is not None:
                return value
            if time.monotonic() >= deadline:
                return None
            time.sleep(poll_s)


def encode_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


_current: ControlPlane | None = None


def configure(store: Store, namespace: str, role: str) -> None:
    """Attach this process to the run's control plane; the fixtures call it before each test.

    :param store: a torch.distributed store (TCPStore, FileStore, HashStore) shared by every process.
    :param namespace: a prefix unique to this run and test; nothing outside it is read or written.
    :param role: this process's role name, e.g. ``"p0"`` or ``"d1"`` (also matched by fault injection).
    """
    from torch.distributed import Store

    if not isinstance(store, Store):
        raise TypeError(f"store only support [torch.distributed.Store], but got {type(store).__name__}")
    if not isinstance(namespace, str) or not namespace:
        raise ValueError(f"namespace must be a non-empty str, but got {namespace!r}")
    if not isinstance(role, str) or not role:
        raise ValueError(f"role must be a non-empty str, but got {role!r}")
    global _current
    _current = ControlPlane(store, namespace, role)


def current() -> ControlPlane | None:
    return _current
