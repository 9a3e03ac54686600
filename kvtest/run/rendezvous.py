"""The store every role of a run shares: connection, named keys, JSON values, waits with deadlines.

p0 hosts a torch.distributed TCPStore bound to exactly the address asked; the others connect. A
FileStore serves shared file systems. Every key carries the run id, so nothing from an earlier run
is read. Values are JSON, never pickle. Every wait has a deadline, watches the peers' heartbeats
and the test's abort flag, and says on timeout who waited for what, under which key, how long.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from kvtest.settings import Rendezvous

__all__ = [
    "Heartbeat",
    "PeerDead",
    "PeerFailed",
    "PeerWatch",
    "RendezvousError",
    "RendezvousLost",
    "RendezvousTimeout",
    "RunStore",
    "PortInUse",
    "Shape",
    "check_shape",
    "keys",
    "open_store",
]

JSON = Any
#: the members a stored object must have, with their types; more members are allowed
Shape = Mapping[str, "type | tuple[type, ...]"]
_JSON_NAMES = {
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true/false",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _json_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(dict.fromkeys(_JSON_NAMES.get(k, k.__name__) for k in kinds))


def check_shape(value: JSON, shape: Shape, full: str, me: str) -> dict[str, Any]:
    """``value`` as an object with every member of ``shape``; else a one-line RendezvousError."""
    problem = None
    if not isinstance(value, dict):
        problem = f"{_json_name(type(value))} where an object belongs"
    else:
        for name, kind in shape.items():
            if name not in value:
                problem = f"no {name!r} member"
            elif not isinstance(value[name], kind):
                problem = f"{name!r} is {_json_name(type(value[name]))}, not {_json_name(kind)}"
            if problem:
                break
    if problem is None and isinstance(value, dict):
        return value
    raise RendezvousError(
        f"{me} read a value of the wrong shape under {full!r} ({problem}): refusing it; is a stranger, "
        "or another kvtest version, writing to this rendezvous?"
    )


class RendezvousError(Exception):
    """A failure of the rendezvous; ``str()`` is one line that names who, what and how long."""


class RendezvousTimeout(RendezvousError):
    pass


class RendezvousLost(RendezvousError):
    """The store itself is unreachable: the leader (which hosts it) is gone."""


class PortInUse(RendezvousError):
    pass


class PeerDead(RendezvousError):
    def __init__(self, role: str, detail: str, step: str | None = None) -> None:
        where = f" at step {step!r}" if step else ""
        super().__init__(f"peer {role} died{where}: {detail}")
        self.role = role
        self.step = step


class PeerFailed(RendezvousError):
    """Another role failed the current test, so waiting for it is pointless."""

    def __init__(self, role: str, step: str, message: str) -> None:
        super().__init__(f"{role} failed at step {step!r}: {message}")
        self.role = role
        self.step = step


class keys:
    """Named key builders: both sides spell every key the same way. Keys are relative to the run."""

    #: the run id p0 announces, outside any run prefix
    CURRENT_RUN = "kvtest/current-run"

    @staticmethod
    def run_prefix(run_id: str) -> str:
        return f"kvtest/{run_id}/"

    @staticmethod
    def claim(role: str) -> str:
        return f"claim/{role}"

    @staticmethod
    def hello(role: str) -> str:
        return f"hello/{role}"

    VERDICT = "verdict"

    @staticmethod
    def heartbeat(role: str) -> str:
        return f"heartbeat/{role}"

    @staticmethod
    def bye(role: str) -> str:
        return f"bye/{role}"

    @staticmethod
    def item(seq: int) -> str:
        return f"item/{seq}"

    @staticmethod
    def test(seq: int) -> str:
        """The prefix of everything one test publishes."""
        return f"t/{seq}/"

    @staticmethod
    def result(seq: int, phase: str, role: str) -> str:
        return f"t/{seq}/{phase}/{role}"

    @staticmethod
    def abort(seq: int) -> str:
        return f"t/{seq}/abort"

    @staticmethod
    def step(seq: int, role: str) -> str:
        return f"t/{seq}/step/{role}"

    @staticmethod
    def barrier(scope: str, name: str, generation: int) -> str:
        return f"{scope}barrier/{name}/{generation}"

    @staticmethod
    def value(scope: str, role: str, name: str) -> str:
        return f"{scope}value/{role}/{name}"


_CONNECT_ERRORS = (dist.DistNetworkError, ConnectionError, OSError)


def _listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUse(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick a free port "
            f"(e.g. --rendezvous tcp://{host}:{port + 1}) or stop the process that holds it"
        ) from exc
    sock.listen(128)
    return sock


def open_store(rdv: Rendezvous, *, host: bool, timeout: float) -> tuple[dist.Store, int]:
    """Open the run's store; return it and the TCP port it is on (0 for a FileStore).

    :param host: p0 hosts the TCPStore, bound to exactly ``rdv.host`` (a port of 0 picks a free one).
    :param timeout: seconds to keep trying to reach the host before :class:`RendezvousLost`.
    """
    if rdv.scheme == "file":
        return dist.FileStore(rdv.path, -1), 0
    if host:
        sock = _listen_socket(rdv.host, rdv.port)
        port = sock.getsockname()[1]
        # TCPStore would listen on every interface; handing it our bound socket keeps it on rdv.host.
        store = dist.TCPStore(
            rdv.host,
            port,
            is_master=True,
            wait_for_workers=False,
            timeout=timedelta(seconds=max(timeout, 1.0)),
            master_listen_fd=sock.detach(),
        )
        return store, port
    try:
        store = dist.TCPStore(
            rdv.host, rdv.port, is_master=False, timeout=timedelta(seconds=max(timeout, 0.1))
        )
    except _CONNECT_ERRORS as exc:
        raise RendezvousLost(
            f"could not reach the rendezvous {rdv} within {timeout:.0f}s: is p0 (the leader) running "
            f"and started with --rendezvous {rdv}? ({str(exc).splitlines()[0]})"
        ) from None
    return store, rdv.port


def reconnect(rdv: Rendezvous, port: int, timeout: float) -> dist.Store:
    """A second connection to the same store, for a thread that must not share the first one."""
    if rdv.scheme == "file":
        return dist.FileStore(rdv.path, -1)
    host = rdv.host
    return dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=max(timeout, 1.0)))


class Heartbeat:
    """A daemon thread that bumps this role's heartbeat counter every ``interval`` seconds."""

    def __init__(self, store: dist.Store, key: str, interval: float = 0.5) -> None:
        self._store = store
        self._key = key
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kvtest-heartbeat-{key}", daemon=True)

    def start(self) -> Heartbeat:
        self._store.add(self._key, 1)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._store.add(self._key, 1)
            except Exception:  # the store is gone; the waits in the main thread report it
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self._interval + 1)


class PeerWatch:
    """Tells whether peers are alive: their heartbeat counters must keep moving.

    ``exited`` (local mode) reports a child process that has ended, at once and with its exit code.
    """

    def __init__(
        self,
        store: dist.Store,
        dead_after: float,
        exited: Callable[[str], str | None] | None = None,
    ) -> None:
        self._store = store
        self._dead_after = dead_after
        self._exited = exited
        self._seen: dict[str, tuple[int, float]] = {}
        self.prefix = ""  # the run's key prefix; set by the RunStore that uses this watch
        self._steps: Callable[[str], str | None] = lambda role: None
        #: each watched peer's step as last read, kept for when the store (and p0 with it) is gone
        self.last_steps: dict[str, str] = {}

    def describe_step_with(self, steps: Callable[[str], str | None]) -> None:
        """Read the peers' steps with ``steps`` (a new test's); forget the steps of the last one."""
        self._steps = steps
        self.last_steps = {}

    def note_steps(self, roles: Iterable[str]) -> None:
        """Remember the step each of ``roles`` has reached (see :attr:`last_steps`)."""
        for role in roles:
            step = self._steps(role)
            if step:
                self.last_steps[role] = step

    def check(self, roles: Iterable[str]) -> None:
        now = time.monotonic()
        for role in roles:
            if self._exited is not None:
                why = self._exited(role)
                if why is not None:
                    raise PeerDead(role, why, self._steps(role))
            key = self.prefix + keys.heartbeat(role)
            beat = self._store.add(key, 0)
            if beat == 0:  # not started yet: joining has its own deadline
                continue
            self.note_steps([role])
            last = self._seen.get(role)
            if last is None or last[0] != beat:
                self._seen[role] = (beat, now)
            elif now - last[1] > self._dead_after:
                raise PeerDead(
                    role,
                    f"no heartbeat for {now - last[1]:.1f}s (limit {self._dead_after:g}s)",
                    self._steps(role),
                )


class RunStore:
    """The run's store seen through its run-id prefix, with JSON values and deadline-bound waits."""

    def __init__(self, raw: dist.Store, run_id: str, me: str, watch: PeerWatch | None = None) -> None:
        self.raw = raw
        self.run_id = run_id
        self.me = me
        self.prefix = keys.run_prefix(run_id)
        self.watch = watch
        if watch is not None:
            watch.prefix = self.prefix
        self._poll = 0.01 if isinstance(raw, dist.FileStore) else 0.0

    def key(self, name: str) -> str:
        return self.prefix + name

    def set(self, name: str, value: JSON) -> None:
        self._call(lambda: self.raw.set(self.key(name), json.dumps(value)))

    def set_if_absent(self, name: str, value: JSON) -> JSON:
        """Set ``name`` unless another role set it first; return the value that stands."""
        encoded = json.dumps(value)
        stored = self._call(lambda: self.raw.compare_set(self.key(name), "", encoded))
        return self._decode(self.key(name), stored)

    def has(self, name: str) -> bool:
        return bool(self._call(lambda: self.raw.check([self.key(name)])))

    def get_now(self, name: str, *, shape: Shape | None = None) -> JSON:
        return self._decode(self.key(name), self._call(lambda: self.raw.get(self.key(name))), shape)

    def _decode(self, full: str, raw: bytes, shape: Shape | None = None) -> JSON:
        """JSON only: anything else under a run key is refused as an error, never unpickled or run.
        With ``shape``, an object missing a member (or holding one of the wrong type) is refused too."""
        try:
            value = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            shown = bytes(raw[:32])
            raise RendezvousError(
                f"{self.me} read a value that is not JSON under {full!r} ({len(raw)} bytes, "
                f"starting {shown!r}): refusing it; is a stranger writing to this rendezvous?"
            ) from None
        return value if shape is None else check_shape(value, shape, full, self.me)

    def add(self, name: str, amount: int) -> int:
        return int(self._call(lambda: self.raw.add(self.key(name), amount)))

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (dist.DistNetworkError, ConnectionError) as exc:
            seen = self.watch.last_steps.get("p0") if self.watch is not None else None
            where = f"; p0 was last seen at step {seen!r}" if seen else ""
            raise RendezvousLost(
                f"{self.me} lost the rendezvous store (hosted by p0): the leader is gone{where} "
                f"({str(exc).splitlines()[0]})"
            ) from None

    def wait(
        self,
        name: str,
        *,
        what: str,
        timeout: float,
        peers: Iterable[str] = (),
        abort: Callable[[], None] | None = None,
        shape: Shape | None = None,
    ) -> JSON:
        """Wait for ``name`` to appear and return its value.

        Between short waits it checks ``peers``' liveness and calls ``abort`` (which raises when the
        test has already failed elsewhere). On the deadline it raises :class:`RendezvousTimeout`.
        """
        peers = tuple(peers)
        full = self.key(name)
        start = time.monotonic()
        deadline = start + timeout
        slice_s = 0.2
        if self.watch is not None and peers:  # the peers' steps, for when p0 (and the store) vanish
            self._call(lambda: self.watch.note_steps(peers) if self.watch else None)
        while True:
            if self._wait_slice(full, min(slice_s, max(deadline - time.monotonic(), 0.001))):
                return self._decode(full, self._call(lambda: self.raw.get(full)), shape)
            if abort is not None:
                abort()
            if self.watch is not None and peers:
                self._call(lambda: self.watch.check(peers) if self.watch else None)
            if time.monotonic() >= deadline:
                raise RendezvousTimeout(
                    f"{self.me} timed out after {time.monotonic() - start:.1f}s waiting for {what} "
                    f"(key {full!r}); raise --kv-timeout if the peers are just slow"
                )

    def _wait_slice(self, full: str, seconds: float) -> bool:
        if self._poll:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if self._call(lambda: self.raw.check([full])):
                    return True
                time.sleep(self._poll)
            return bool(self._call(lambda: self.raw.check([full])))
        try:
            self._call(lambda: self.raw.wait([full], timedelta(seconds=seconds)))
            return True
        except dist.DistStoreError:
            return False
