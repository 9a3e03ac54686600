"""Every role but p0, as a plain object: join the run p0 announced, iterate p0's announcements,
report each outcome, leave. No pytest here: a run this role cannot join as configured is
:class:`RunRefused`; the hook adapter (:mod:`kvtest.run.follower_session`) turns it into a usage error."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from kvtest.host.store_peek import peek
from kvtest.run.errors import RendezvousError, RendezvousLost, RunRefused
from kvtest.run.handshake import Handshake
from kvtest.run.member import Member
from kvtest.run.messages import IDLE_LIMIT, Bye, End, RoleResult, TestAnnounce, read_item
from kvtest.run.plan import RunState
from kvtest.run.rendezvous import PeerWatch, RunStore, keys, open_store
from kvtest.run.signing import RunSeal, Seal

__all__ = ["Follower"]


class Follower(Member):
    """A follower of p0's run: :meth:`join`, :meth:`agree`, then :meth:`announcements` until the end,
    :meth:`report` each phase of each test run, and :meth:`leave`."""

    _raw: Any = None
    _port = 0
    run_id = ""

    def join(self) -> str:
        """Open the store and read the run p0 announced; its id. Then :meth:`agree`.

        :raises RunRefused: no run to join, or another run than --run-id.
        """
        s = self.settings
        assert s.rendezvous is not None
        self.write(f"kvtest: {self.me}: {self.thread_budget().describe()}")
        hosting = s.hosts_store
        try:
            raw, port = open_store(
                s.rendezvous, host=hosting, timeout=s.join_timeout,
                dead_after=None if hosting else s.dead_after,
            )
            current = self._current_run(raw)
            self._raw, self._port = raw, port
        except RendezvousError as exc:
            raise RunRefused(f"kvtest: {self.me}: {exc}") from None
        if s.run_id is not None and current != s.run_id:
            raise RunRefused(
                f"kvtest: {self.me}: the rendezvous {s.rendezvous} belongs to run {current!r}, not "
                f"{s.run_id!r} (from {s.sources.get('run_id')}); give the leader's run id or none"
            )
        self.run_id = current
        return current

    def agree(self) -> list[str]:
        """Say hello and obey p0's verdict; how the roles' stacks differ, as p0 said.

        :raises RunRefused: p0 refused the run, or this role's slot is taken."""
        s = self.settings
        assert s.rendezvous is not None
        raw, port, hosting = self._raw, self._port, s.hosts_store
        address = (s.rendezvous.host, port) if s.rendezvous.scheme == "tcp" and not hosting else None
        self.store = RunStore(
            raw, self.run_id, self.me, PeerWatch(raw, s.dead_after), token=self.token, address=address,
            warn=self.say, alive=self.last_round_trip, host_name=s.store_host_name(),
        )
        self.start_heartbeat(s.rendezvous, port)
        warning = self.unauthenticated(s.rendezvous)
        if warning:
            self.write(warning)
        handshake = Handshake(self.store, self.hello(), self.topology.roles, s.join_timeout)
        try:
            handshake.claim()
            handshake.follow()
        except (RendezvousError, RunRefused) as exc:
            self.stop_threads()
            if isinstance(exc, RunRefused):
                raise
            raise RunRefused(f"kvtest: {self.me}: {exc}") from None
        self.state = RunState.OPEN
        return handshake.stack

    def _current_run(self, raw: Any) -> str:
        """The run p0 announced. On a shared file an older run's id may linger: wait for ours.

        With a token the announcement must be signed with it (:meth:`RunSeal.read_announcement`). One
        signed with another token (or none, for longer than --kv-dead-after: p0 puts its own back at
        once) means p0 and this role were given different tokens: this role leaves its hello for p0
        to see, and refuses to run.
        """
        s = self.settings
        assert s.rendezvous is not None
        checker = RunSeal(self.token, self.me)
        deadline = time.monotonic() + s.join_timeout
        unsigned_since: float | None = None
        said: set[bytes] = set()  # the refused announcements already reported
        tcp = s.rendezvous.scheme == "tcp"
        while True:
            try:
                stored = peek(raw, keys.CURRENT_RUN)
            except Exception as exc:
                raise RendezvousLost(f"lost {s.rendezvous}: {str(exc).splitlines()[0]}") from None
            seen = checker.read_announcement(stored) if stored is not None else None
            if seen is not None and seen.verdict is Seal.BAD and bytes(stored or b"") not in said:
                said.add(bytes(stored or b""))
                self.say(f"kvtest: {self.me}: {checker.forged(keys.CURRENT_RUN, seen.verdict)}")
            current = seen.run_id if seen is not None else None
            if seen is not None and current is not None and (tcp or current == s.run_id):
                if seen.verdict is Seal.VALID:
                    return current
                if unsigned_since is None and seen.verdict is Seal.UNSIGNED:
                    self.say(f"kvtest: {self.me}: {checker.forged(keys.CURRENT_RUN, seen.verdict)}")
                unsigned_since = unsigned_since or time.monotonic()
                if seen.verdict is Seal.OTHER_TOKEN or time.monotonic() - unsigned_since > s.dead_after:
                    self._leave_hello(raw, current)
                    raise checker.mismatch(current, str(s.rendezvous), seen.their_id)
            if time.monotonic() > deadline:
                raise RendezvousLost(
                    f"no run {s.run_id or ''} was announced at {s.rendezvous} within {s.join_timeout:g}s: "
                    "is p0 (the leader) running with the same --rendezvous?"
                )
            time.sleep(0.05)

    def _leave_hello(self, raw: Any, run_id: str) -> None:
        """A hello in the announced run, so p0 says the token mismatch too."""
        store = RunStore(raw, run_id, self.me, token=self.token)
        try:
            store.set(keys.hello(self.me), self.hello().to_json())
        except RendezvousError:
            pass

    def announcements(self) -> Iterator[tuple[int, TestAnnounce]]:
        """p0's announced tests that include this role, in p0's order, until p0 announces the end.

        :raises RendezvousError: the store is gone, or holds what is not an announcement."""
        assert self.store is not None
        seq = 0
        while True:
            key = keys.item(seq)
            data = self.store.wait(key, what="p0's next test", timeout=IDLE_LIMIT, peers=["p0"], shape={})
            announced = read_item(data, self.store.key(key), self.me)
            if isinstance(announced, End):
                return
            if self.me in announced.roles:
                yield seq, announced
            seq += 1

    def report(self, seq: int, phase: str, result: RoleResult) -> None:
        """Publish this role's outcome of ``phase`` of test ``seq`` (a lost store is p0's to report)."""
        if self.store is None:
            return
        try:
            self.store.set(keys.result(seq, phase, self.me), result.to_json())
        except RendezvousError:
            pass

    def report_missing(self, seq: int, nodeid: str) -> None:
        """An announced test this role did not collect: a failure p0 reports under its name."""
        assert self.store is not None
        why = f"{self.me} did not collect {nodeid} (different files or kvtest version)"
        missing = RoleResult(self.me, "failed", "collect", why)
        self.store.set(keys.result(seq, "call", self.me), missing.to_json())
        self.store.set(keys.result(seq, "teardown", self.me), RoleResult(self.me, "passed").to_json())

    def leave(self, failed: int) -> None:
        """Say goodbye (with this role's failures) and stop; a role hosting the store waits for p0 first."""
        if self.store is not None:
            try:
                self.store.set(keys.bye(self.me), Bye(failed).to_json())
                if self.settings.hosts_store:  # the others still use the store this process hosts
                    self.store.wait(keys.CLOSED, what="p0 to close the run", timeout=30, peers=["p0"])
            except RendezvousError:
                pass
        self.state = RunState.FINISHED
        self.stop_threads(wait=not self.unreachable())
