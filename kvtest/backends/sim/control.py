"""The control plane: metadata shared through a torch.distributed store as JSON (bytes as base64).

Every key lives under ``<namespace>/sim/``. Records are never deleted: a released or removed record
is overwritten with a release marker, so no read can block on a vanished key. A record is read in one
round trip (:func:`kvtest.host.store_peek.peek`).

Two ways in (:mod:`kvtest.backends.sim.context` builds the plane for both): kvtest's fixtures call
``configure`` before each test; any other program (a vendor sample under ``kvtest run``) gets its plane
from the environment when ``LLMDataDist.init`` runs: ``KVTEST_SIM_STORE`` (``tcp://HOST:PORT``, a
TCPStore hosted elsewhere that the sim joins as a client, or ``file:///PATH``, a FileStore),
``KVTEST_SIM_NAMESPACE`` and ``KVTEST_SIM_ROLE``.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvtest.host.store_peek import peek

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
        stored = peek(self.store, key)
        return None if stored is None else _live(json.loads(stored))

    def fetch_many(self, keys: list[str]) -> list[Any]:
        return [self.fetch(k) for k in keys]

    def release(self, key: str, expected: Any) -> bool:
        """Atomically mark the record ``expected`` at ``key`` released; False when it changed first."""
        marker = json.dumps({_RELEASED: f"{os.getpid()}-{next(_claims)}"})
        return bool(self.store.compare_set(key, json.dumps(expected), marker).decode() == marker)

    def update(self, key: str, change: Callable[[Any], Any]) -> Any:
        """Apply ``change`` to the record at ``key`` atomically (compare-and-set retry); return the result."""
        while True:
            stored = peek(self.store, key)
            old_text = stored.decode() if stored is not None else ""
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


STORE_VAR = "KVTEST_SIM_STORE"
NAMESPACE_VAR = "KVTEST_SIM_NAMESPACE"
ROLE_VAR = "KVTEST_SIM_ROLE"
#: the namespace of every process that names none: one shared by the group on the store
DEFAULT_NAMESPACE = "kvtest-run"
#: how long joining the store may take before init fails
CONNECT_TIMEOUT_S = 30.0

NOT_CONFIGURED = (
    "the sim control plane is not configured: start the program with `kvtest run` "
    f"(e.g. kvtest run 'python prefill.py' 'python decode.py') or set {STORE_VAR}=tcp://HOST:PORT "
    "(a TCPStore every process can reach) or file:///PATH"
)

_stores: dict[str, Store] = {}


class ControlPlaneError(Exception):
    """The environment names a control plane that cannot be used; the message says why and how to fix it."""


def _open_store(url: str) -> Store:
    """A client of the store at ``url`` (``tcp://HOST:PORT`` or ``file:///PATH``), one per process."""
    from datetime import timedelta
    from urllib.parse import urlsplit

    if url in _stores:
        return _stores[url]
    import torch.distributed as dist

    parts = urlsplit(url)
    store: Store
    if parts.scheme == "tcp":
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            host, port = None, None
        if not host or not port:
            raise ControlPlaneError(f"{STORE_VAR}={url!r} is not tcp://HOST:PORT (e.g. tcp://127.0.0.1:29600)")
        try:
            timeout = timedelta(seconds=CONNECT_TIMEOUT_S)
            store = dist.TCPStore(host, port, is_master=False, timeout=timeout, wait_for_workers=False)
        except Exception as exc:  # noqa: BLE001 - any connect failure has the same fix
            raise ControlPlaneError(
                f"cannot join the store at {STORE_VAR}={url} "
                f"({type(exc).__name__}: {' '.join(str(exc).split())}): "
                "is `kvtest run` (or whoever hosts it) still running?"
            ) from None
    elif parts.scheme == "file":
        if not parts.path.startswith("/"):
            raise ControlPlaneError(f"{STORE_VAR}={url!r} needs an absolute path: file:///PATH")
        store = dist.FileStore(parts.path, -1)
    else:
        raise ControlPlaneError(f"{STORE_VAR}={url!r} must be tcp://HOST:PORT or file:///PATH")
    _stores[url] = store
    return store


def from_environment(env: Mapping[str, str]) -> ControlPlane | None:
    """The plane ``env`` names, or None when ``KVTEST_SIM_STORE`` is unset.

    :raises ControlPlaneError: when the variable is set but unusable.
    """
    url = env.get(STORE_VAR, "").strip()
    if not url:
        return None
    namespace = env.get(NAMESPACE_VAR, "").strip() or DEFAULT_NAMESPACE
    role = env.get(ROLE_VAR, "").strip() or f"pid{os.getpid()}"
    return ControlPlane(_open_store(url), namespace, role)
