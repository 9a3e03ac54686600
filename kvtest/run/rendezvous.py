"""The store every role of a run shares: connection, named keys, JSON values, waits with deadlines.

p0 hosts a torch.distributed TCPStore bound to exactly the address asked; the others connect. A
FileStore serves shared file systems. Every key carries the run id, so nothing from an earlier run
is read. Values are JSON, never pickle. Every wait has a deadline, watches the peers' heartbeats
and the test's abort flag, and says on timeout who waited for what, under which key, how long.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from functools import partial
from typing import Any

import torch.distributed as dist

from kvtest.host.store_peek import ABSENT, peek
from kvtest.run.errors import (
    PeerDead,
    PeerFailed,
    PortInUse,
    ProtocolError,
    RendezvousError,
    RendezvousLost,
    RendezvousPartition,
    RendezvousTimeout,
)
from kvtest.run.messages import Shape, check_shape
from kvtest.run.signing import ANNOUNCEMENT_KEY, ForgedValue, RunSeal, Token, TokenMismatch
from kvtest.settings import Rendezvous

__all__ = [
    "Heartbeat",
    "PeerDead",
    "PeerFailed",
    "PeerWatch",
    "RendezvousError",
    "ForgedValue",
    "RendezvousLost",
    "RendezvousPartition",
    "RendezvousTimeout",
    "RunStore",
    "PortInUse",
    "ProtocolError",
    "Shape",
    "TokenMismatch",
    "check_shape",
    "keys",
    "diagnose",
    "open_store",
    "reconnect",
]

JSON = Any


class keys:
    """Named key builders: both sides spell every key the same way. Keys are relative to the run."""

    #: the run id p0 announces, outside any run prefix
    CURRENT_RUN = ANNOUNCEMENT_KEY

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
    #: p0 is done with the store; a follower hosting it (a launcher's rank 0) may leave
    CLOSED = "closed"

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


def _listen_socket(host: str, port: int, anywhere: bool = False) -> socket.socket:
    """A socket listening on exactly ``host:port``. With ``anywhere``, an address this host does not
    have (a Kubernetes Service's ClusterIP, which kube-proxy forwards here) listens on every address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        if anywhere and exc.errno == errno.EADDRNOTAVAIL:
            sock.close()
            return _listen_socket("::" if family == socket.AF_INET6 else "0.0.0.0", port)
        sock.close()
        raise PortInUse(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick a free port "
            f"(e.g. --rendezvous tcp://{host}:{port + 1}) or stop the process that holds it"
        ) from exc
    sock.listen(128)
    return sock


def _socket_fds() -> set[int]:
    fds = set()
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                fds.add(int(name))
        except OSError:
            continue
    return fds


def _bound_in_time(before: set[int], port: int, dead_after: float | None) -> None:
    """Give the store connection(s) opened since ``before`` a deadline of their own.

    With no RST on a dead link, a TCPStore call blocks in ``recv`` for ever (torch's ``wait`` sends
    CANCEL_WAIT after its timeout and then waits for the answer without one). TCP keepalive probes
    each second plus ``TCP_USER_TIMEOUT`` make the kernel end the connection with ETIMEDOUT once p0's
    host has not acknowledged anything for ``dead_after`` seconds, so the call raises instead.
    """
    if dead_after is None:
        return
    for fd in _socket_fds() - before:
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with sock:
            try:
                if sock.type != socket.SOCK_STREAM or sock.getpeername()[1] != port:
                    continue
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, max(int(dead_after), 1))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(dead_after * 1000))
            except OSError:
                continue


def open_store(
    rdv: Rendezvous, *, host: bool, timeout: float, dead_after: float | None = None
) -> tuple[dist.Store, int]:
    """Open the run's store; return it and the TCP port it is on (0 for a FileStore).

    :param host: p0 hosts the TCPStore, bound to exactly ``rdv.host`` (a port of 0 picks a free one).
    :param timeout: seconds to keep trying to reach the host before :class:`RendezvousLost`.
    :param dead_after: a client's connection fails once p0's host is silent this long (see
        :func:`_bound_in_time`); None leaves it as torch makes it.
    """
    if rdv.scheme == "file":
        return dist.FileStore(rdv.path, -1), 0
    if host:
        # a launcher's leader address may be a Service's, not this host's: see _listen_socket
        sock = _listen_socket(rdv.host, rdv.port, anywhere=rdv.hosted_by == "rank0")
        bound, port = sock.getsockname()[:2]
        # the host's own client connects where it listens (loopback when that is every address)
        me = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bound, rdv.host)
        # TCPStore would listen on every interface; handing it our bound socket keeps it on rdv.host.
        store = dist.TCPStore(
            me,
            port,
            is_master=True,
            wait_for_workers=False,
            timeout=timedelta(seconds=max(timeout, 1.0)),
            master_listen_fd=sock.detach(),
        )
        return store, port
    before = _socket_fds()
    try:
        store = dist.TCPStore(
            rdv.host, rdv.port, is_master=False, timeout=timedelta(seconds=max(timeout, 0.1))
        )
    except _CONNECT_ERRORS as exc:
        raise RendezvousLost(
            f"could not reach the rendezvous {rdv} within {timeout:.0f}s: is p0 (the leader) running "
            f"and started with --rendezvous {rdv}? ({str(exc).splitlines()[0]})"
        ) from None
    _bound_in_time(before, rdv.port, dead_after)
    return store, rdv.port


def reconnect(rdv: Rendezvous, port: int, timeout: float, dead_after: float | None = None) -> dist.Store:
    """A second connection to the same store, for a thread that must not share the first one."""
    if rdv.scheme == "file":
        return dist.FileStore(rdv.path, -1)
    before = _socket_fds()
    store = dist.TCPStore(rdv.host, port, is_master=False, timeout=timedelta(seconds=max(timeout, 1.0)))
    _bound_in_time(before, port, dead_after)
    return store


def diagnose(host: str, port: int, seconds: float = 1.0) -> str:
    """Why a store connection broke: ``"partition"`` when p0's host does not answer a new connection
    within ``seconds``, ``"gone"`` when it refuses or resets it (the host is up, p0's process is not, or
    is closing its sockets as it exits), else ``"up"``."""
    try:
        with socket.create_connection((host, port), timeout=seconds):
            return "up"
    except (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError):
        return "gone"
    except OSError:
        return "partition"


class Heartbeat:
    """A daemon thread that bumps this role's heartbeat counter every ``interval`` seconds.

    :attr:`last_ok` is when a bump last made the round trip to the store. ``keep`` (p0) is a raw key
    and value the thread puts back whenever someone else has overwritten it: the run announcement.
    """

    def __init__(
        self, store: dist.Store, key: str, interval: float = 0.5, keep: tuple[str, str] | None = None
    ) -> None:
        self._store = store
        self._key = key
        self._interval = interval
        self._keep = keep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kvtest-heartbeat-{key}", daemon=True)
        self.last_ok = time.monotonic()

    def start(self) -> Heartbeat:
        self._store.add(self._key, 1)
        self.last_ok = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._store.add(self._key, 1)
                self.last_ok = time.monotonic()
                if self._keep is not None:
                    key, value = self._keep
                    if peek(self._store, key) != value.encode():
                        self._store.set(key, value)
            except Exception:  # the store is gone; the waits in the main thread report it
                return

    def stop(self, wait: bool = True) -> None:
        """Stop beating; ``wait=False`` when the store is unreachable (the thread may be inside it)."""
        self._stop.set()
        if wait:
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
                    f"no heartbeat for {now - last[1]:.1f}s (limit {self._dead_after:g}s): its process "
                    "or host died, or the network to it is down",
                    self._steps(role),
                )


class RunStore:
    """The run's store seen through its run-id prefix, with JSON values and deadline-bound waits.

    :param token: sign every value written and refuse every value read that is not signed with it.
    :param address: p0's rendezvous ``(host, port)``, to tell a partition from a dead leader.
    :param warn: where a refused value is reported, one line each (default: stderr).
    :param alive: when the last round trip to the store succeeded elsewhere (the heartbeat thread).
    :param host_name: who hosts the store, for messages: ``p0``, or what a launcher placed it on.
    """

    def __init__(
        self,
        raw: dist.Store,
        run_id: str,
        me: str,
        watch: PeerWatch | None = None,
        *,
        token: Token | None = None,
        address: tuple[str, int] | None = None,
        warn: Callable[[str], None] | None = None,
        alive: Callable[[], float] | None = None,
        host_name: str = "p0",
    ) -> None:
        self.raw = raw
        self.host_name = host_name
        self.run_id = run_id
        self.me = me
        self.prefix = keys.run_prefix(run_id)
        self.watch = watch
        self.token = token
        self.seal = RunSeal(token, me)
        self.address = address
        self.warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        self._alive = alive
        self.last_ok = time.monotonic()
        #: set once the store is unreachable: every later call fails at once with this error
        self.lost: RendezvousLost | None = None
        self._refused: set[tuple[str, bytes]] = set()
        if watch is not None:
            watch.prefix = self.prefix
        self._poll = 0.01 if isinstance(raw, dist.FileStore) else 0.0

    def key(self, name: str) -> str:
        return self.prefix + name

    def encode(self, full: str, value: JSON) -> str:
        """The stored text of ``value`` under the full key ``full``: sealed when there is a token."""
        return self.seal.encode(self.run_id, full, value)

    def set(self, name: str, value: JSON) -> None:
        full = self.key(name)
        encoded = self.encode(full, value)
        self._call(lambda: self.raw.set(full, encoded))

    def set_if_absent(self, name: str, value: JSON) -> JSON:
        """Set ``name`` unless another role set it first; return the value that stands.

        A value there that is not signed with the run's token is refused and replaced.
        """
        full = self.key(name)
        encoded = self.encode(full, value)
        expected: str | bytes = ""
        for _ in range(8):
            # (torch takes bytes too, so a stranger's non-UTF-8 value can be replaced)
            stored = self._call(partial(self.raw.compare_set, full, expected, encoded))  # type: ignore[arg-type]
            if stored == encoded.encode():
                return value
            try:
                return self._decode(full, stored)
            except ForgedValue as exc:
                self._refuse(exc, full, stored)
                expected = bytes(stored)
        raise RendezvousError(f"{self.me} could not write {full!r}: someone keeps overwriting it")

    def has(self, name: str) -> bool:
        return bool(self._call(lambda: self.raw.check([self.key(name)])))

    def get_now(self, name: str, *, shape: Shape | None = None) -> JSON:
        return self._decode(self.key(name), self._call(lambda: self.raw.get(self.key(name))), shape)

    def read(self, name: str, *, shape: Shape | None = None) -> JSON | None:
        """The value under ``name`` now; None when there is none or it is refused (reported once)."""
        full = self.key(name)
        stored = self._call(lambda: peek(self.raw, full))
        if stored is None:
            return None
        try:
            return self._decode(full, stored, shape)
        except ForgedValue as exc:
            self._refuse(exc, full, stored)
            return None

    def _refuse(self, exc: ForgedValue, full: str, stored: bytes) -> None:
        if (full, bytes(stored)) not in self._refused:
            self._refused.add((full, bytes(stored)))
            self.warn(f"kvtest: {self.me}: {exc}")

    def _decode(self, full: str, raw: bytes, shape: Shape | None = None) -> JSON:
        """The value under ``full`` through the run's seal (:class:`RunSeal`); with ``shape``, an
        object missing a member (or holding one of the wrong type) is refused too."""
        value = self.seal.decode(self.run_id, full, raw)
        return value if shape is None else check_shape(value, shape, full, self.me)

    def add(self, name: str, amount: int) -> int:
        return int(self._call(lambda: self.raw.add(self.key(name), amount)))

    def _call(self, fn: Callable[[], Any]) -> Any:
        if self.lost is not None:
            raise self.lost
        try:
            result = fn()
        except (dist.DistNetworkError, ConnectionError) as exc:
            self.lost = self._lost(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise self.lost from None
        self.last_ok = time.monotonic()
        return result

    def check_peers(self, peers: Iterable[str]) -> None:
        """Raise now when one of ``peers`` is dead (its heartbeat stopped) or the store is gone."""
        watch = self.watch
        if watch is not None:
            self._call(lambda: watch.check(peers))

    def lost_now(self, detail: str) -> RendezvousLost:
        """Declare the store unreachable (``detail`` says how it was noticed): every later call fails
        at once with the returned error."""
        self.lost = self._lost(detail)
        return self.lost

    def _lost(self, detail: str) -> RendezvousLost:
        seen = self.watch.last_steps.get("p0") if self.watch is not None else None
        where = f"; p0 was last seen at step {seen!r}" if seen else ""
        state = diagnose(*self.address) if self.address is not None else "gone"
        if state == "partition":
            host, port = self.address or ("?", 0)
            last = max(self.last_ok, self._alive() if self._alive is not None else 0.0)
            shown = f"[{host}]" if ":" in host else host
            return RendezvousPartition(
                f"{self.me} cannot reach {self.host_name}'s rendezvous at {shown}:{port} for "
                f"{time.monotonic() - last:.1f}s: network partition or {self.host_name}'s host is down{where}"
            )
        return RendezvousLost(
            f"{self.me} lost the rendezvous store (hosted by {self.host_name}): "
            f"{'the leader' if self.host_name == 'p0' else self.host_name} is gone{where} ({detail})"
        )

    def wait(
        self,
        name: str,
        *,
        what: str,
        timeout: float,
        peers: Iterable[str] = (),
        abort: Callable[[], None] | None = None,
        shape: Shape | None = None,
        forged_grace: float | None = None,
    ) -> JSON:
        """Wait for ``name`` to appear and return its value.

        Between short waits it checks ``peers``' liveness and calls ``abort`` (which raises when the
        test has already failed elsewhere). On the deadline it raises :class:`RendezvousTimeout`.
        A value that is not signed with the run's token is reported once and waited past, for the
        real one; with ``forged_grace``, only that many seconds, then its :class:`ForgedValue` is raised.
        """
        peers = tuple(peers)
        full = self.key(name)
        start = time.monotonic()
        deadline = start + timeout
        slice_s = 0.2
        forged: tuple[bytes, float, ForgedValue] | None = None
        # The peers' steps (for when p0 and the store vanish) are noted between slices, by the watch's
        # check: a wait that ends within its first slice (most do) makes no round trips for them.
        # Most values are there already (a smoke run: about 2 in 3), so the first look is a read: one
        # round trip, where a wait and then a read take two.
        stored = self._call(lambda: peek(self.raw, full))
        while True:
            if stored is None and forged is None:
                present = self._wait_slice(full, min(slice_s, max(deadline - time.monotonic(), 0.001)))
                stored = self._call(lambda: peek(self.raw, full)) if present else None
                if present and stored is None and self._call(lambda: self.raw.check([full])):
                    stored = self._read_present(full)  # set since that read, or a stranger's marker
                # (present, yet nothing there: another role's peek of the key woke this wait; the libuv
                # TCPStore's compareSet wakes a key's waiters even when the key is missing)
            elif stored is None:
                time.sleep(min(0.05, max(deadline - time.monotonic(), 0.0)))
                stored = self._read_present(full)  # a refused value was there: keys are never deleted
            if stored is not None:
                if forged is None or stored != forged[0]:
                    try:
                        return self._decode(full, stored, shape)
                    except ForgedValue as exc:
                        self._refuse(exc, full, stored)
                        forged = (stored, forged[1] if forged else time.monotonic(), exc)
                if forged_grace is not None and time.monotonic() - forged[1] >= forged_grace:
                    raise forged[2]
            if abort is not None:
                abort()
            if self.watch is not None and peers:
                self._call(lambda: self.watch.check(peers) if self.watch else None)
            if time.monotonic() >= deadline:
                refused = "; refused a value there not signed with the run's token" if forged else ""
                raise RendezvousTimeout(
                    f"{self.me} timed out after {time.monotonic() - start:.1f}s waiting for {what} "
                    f"(key {full!r}){refused}; raise --kv-timeout if the peers are just slow"
                )
            stored = None

    def _read_present(self, full: str) -> bytes:
        """The value of a key known to be there; peek's own marker, which only a stranger stores and
        a peek reads as no value, comes back as itself (to be refused like any unsigned value)."""
        stored = self._call(lambda: peek(self.raw, full))
        return stored if stored is not None else ABSENT.encode()

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
