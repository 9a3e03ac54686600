"""What the leader and every follower share: the store, the heartbeat, the watchdog, the current
test's scope, this role's hello. Plain objects: no pytest hooks here."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Sequence

from kvtest.host.fingerprint import fingerprint
from kvtest.roles.topology import Topology
from kvtest.run.errors import PeerDead, RendezvousError
from kvtest.run.messages import Hello
from kvtest.run.plan import RunState
from kvtest.run.rendezvous import Heartbeat, PeerWatch, RunStore, keys, reconnect
from kvtest.run.scope import TestScope, test_seed
from kvtest.run.signing import MAKE_ONE, TOKEN_ENV, token_from
from kvtest.run.threads import ThreadBudget
from kvtest.run.threads import apply as apply_threads
from kvtest.run.threads import plan as plan_threads
from kvtest.run.watchdog import Watchdog
from kvtest.settings import Rendezvous, Settings

__all__ = ["Member"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Member:
    """One role of a run.

    :param write: where a line for the user goes (the terminal and the role's log).
    :param say: the same, also from inside a running test (output capture paused).
    """

    def __init__(
        self, settings: Settings, write: Callable[[str], None], say: Callable[[str], None]
    ) -> None:
        self.settings = settings
        self.me = settings.role_name
        self.write = write
        self.say = say
        self.state = RunState.IDLE
        self.store: RunStore | None = None
        self.heartbeat: Heartbeat | None = None
        self.watchdog: Watchdog | None = None
        self._dog_watch: PeerWatch | None = None
        self._dog_store: RunStore | None = None
        self.scope: TestScope | None = None
        self.topology = settings.topology or Topology(1, 1)
        self.backend_name = ""
        self.backend_why = ""
        # a token file that cannot be used raises BadToken (a RunRefused)
        self.token = token_from(settings.token_file, settings.sources.get("token_file", "default"))
        self._stack: tuple[str, dict[str, str]] | None = None
        #: every test id this role collected (before deselection), for the handshake's digest
        self.all_ids: list[str] = []

    def start_heartbeat(
        self, rdv: Rendezvous, port: int, keep: tuple[str, str] | None = None,
        exited: Callable[[str], str | None] | None = None,
    ) -> None:
        assert self.store is not None
        s = self.settings
        hb_store = reconnect(rdv, port, s.join_timeout, s.dead_after)
        self.heartbeat = Heartbeat(hb_store, self.store.key(keys.heartbeat(self.me)), keep=keep).start()
        if self.store.address is None:  # this role hosts the store: it watches its peers' heartbeats
            dog_store = reconnect(rdv, port, s.join_timeout, s.dead_after)
            self._dog_watch = PeerWatch(dog_store, s.dead_after, exited)
            # the watchdog's own view of the run (a store client is not shared between threads)
            self._dog_store = RunStore(
                dog_store, self.store.run_id, self.me, self._dog_watch, token=self.token
            )
        self.watchdog = Watchdog(self._peers_lost).start()

    def stop_threads(self, wait: bool = True) -> None:
        """No heartbeat thread may be inside the store when the process exits: torch aborts it
        ("terminate called without an active exception")."""
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop(wait=wait)

    def _peers_lost(self) -> BaseException | None:
        """The watchdog's question, while a test body runs: are this test's peers gone? The store's
        host asks their heartbeats; a role that reaches the store over the network asks whether it
        still makes round trips to it (the heartbeat thread's last one)."""
        scope, store = self.scope, self.store
        if scope is None or store is None or store.lost is not None:
            return None
        peers = [role for role in scope.roles if role != self.me]
        if self._dog_watch is not None and self._dog_store is not None:
            dog = self._dog_store

            def step(role: str) -> str | None:  # the step the peer announced last, read now
                try:
                    value = dog.read(keys.step(scope.seq, role))
                except RendezvousError:
                    return None
                return None if value is None else str(value)

            self._dog_watch.describe_step_with(step)
            try:
                self._dog_watch.check(peers)
            except PeerDead as exc:
                return exc
            return None
        silent = time.monotonic() - max(self.last_round_trip(), store.last_ok)
        if silent <= self.settings.dead_after + 0.5:
            return None
        lost = store.lost_now(f"no round trip to the store for {silent:.1f}s")
        return lost

    def last_round_trip(self) -> float:
        return self.heartbeat.last_ok if self.heartbeat is not None else 0.0

    def unauthenticated(self, rdv: Rendezvous) -> str | None:
        """The header's warning when strangers on the network could write to this run's store."""
        if self.token is not None or rdv.scheme != "tcp" or _is_loopback(rdv.host):
            return None
        return (
            f"kvtest: WARNING: the rendezvous {rdv} is unauthenticated: anyone who reaches it can read "
            "the run id and write results, barriers and aborts; give every role the same secret with "
            f"--kv-token-file PATH (or {TOKEN_ENV}), e.g. {MAKE_ONE}"
        )

    def hello(self) -> Hello:
        return Hello.make(
            self.me, self.backend_name, self.topology, self.settings.seed, self.settings.profile,
            self.all_ids, fingerprint=self.fingerprint(),
            require_same_stack=self.settings.require_same_stack,
        )

    def fingerprint(self) -> dict[str, str]:
        """This role's environment fingerprint, as its hello carries it (file reads only: ~3 ms), read
        once per backend name: the artifacts log may ask before the backend is resolved."""
        backend = self.backend_name or self.settings.backend
        if self._stack is None or self._stack[0] != backend:
            device = self.settings.device_id()
            self._stack = (backend, fingerprint(backend, None if device is None else [device]))
        return self._stack[1]

    def local_processes(self) -> int | None:
        """This run's processes on this host: every role in local mode, the launcher's count when one
        started us, unknown for a role started by hand."""
        if self.settings.local_mode:
            return len(self.topology.roles)
        return self.settings.launch.local_size if self.settings.launch is not None else None

    def thread_budget(self) -> ThreadBudget:
        """Plan and apply this process's torch threads."""
        s = self.settings
        where = s.sources.get("threads", "default")
        budget = plan_threads(s.threads, where, processes=self.local_processes())
        apply_threads(budget)
        return budget

    def new_scope(self, seq: int, nodeid: str, roles: Sequence[str], timeout: float) -> TestScope:
        assert self.store is not None
        scope = TestScope(self.store, seq, self.me, list(roles), self.topology, timeout)
        scope.seed = test_seed(self.settings.seed, nodeid)
        # phase costs (kvtest.results.metrics.PhaseClock): the rendezvous waits are phase "wait"
        scope.metrics.clock.activate()
        scope.barrier = scope.metrics.clock.timed("wait", scope.barrier)  # type: ignore[method-assign]
        scope.fetch = scope.metrics.clock.timed("wait", scope.fetch)  # type: ignore[method-assign]
        self.scope = scope
        if self.store.watch is not None:
            self.store.watch.describe_step_with(scope.peer_step)
        return scope

    def unreachable(self) -> bool:
        """Whether the run stopped because the store or a peer could not be reached."""
        return self.store is not None and self.store.lost is not None
