"""p0's side of the protocol as a plain object: plan the run, open it (store, local roles,
announcement, heartbeat), handshake, announce each multi-role test and gather every phase of it,
finish. No pytest here: a run that cannot start as configured is :class:`RunRefused`; the hook adapter
(:mod:`kvtest.run.leader_session`) turns it into a usage error."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence

from kvtest.roles.topology import Topology
from kvtest.run.errors import PeerDead, PortInUse, RendezvousError, RunRefused
from kvtest.run.failure import PeerNeverJoined, classify
from kvtest.run.handshake import Handshake
from kvtest.run.launcher import LocalCluster
from kvtest.run.member import Member
from kvtest.run.messages import RESULT_SHAPE, End, RoleResult, TestAnnounce
from kvtest.run.plan import RunPlan, RunState
from kvtest.run.rendezvous import PeerWatch, RunStore, keys, open_store
from kvtest.run.scope import TestScope
from kvtest.run.signing import TOKEN_ENV, RunSeal, Token
from kvtest.run.threads import ThreadBudget
from kvtest.settings import Rendezvous, Settings

__all__ = ["Launch", "Leader"]

#: local mode's way to start the other roles: (plan, rendezvous with its port, secrets, budget)
Launch = Callable[[RunPlan, Rendezvous, Mapping[str, str] | None, ThreadBudget], LocalCluster]


class Leader(Member):
    """p0: hosts the store, starts the local roles, announces tests, merges outcomes."""

    def __init__(self, settings: Settings, write: Callable[[str], None], say: Callable[[str], None]) -> None:
        super().__init__(settings, write, say)
        self.cluster: LocalCluster | None = None
        self.plan_: RunPlan | None = None
        self.handshake: Handshake | None = None
        self.seq = 0
        self.dead: dict[str, str] = {}  # role -> how it died
        self.run_id = ""
        #: set when roles never joined: every selected multi-role test is then an environment error
        self.never_joined: PeerNeverJoined | None = None

    def plan(self, needed: Topology) -> RunPlan:
        """Fix the run: its topology (``needed`` by the selected tests, in local mode without
        --topology) and run id. A --device-id list that does not fit the roles is refused here."""
        s = self.settings
        if s.topology is None and s.local_mode:
            self.topology = needed
        if s.local_mode:
            s.local_device_ids(self.topology.roles)
        self.run_id = s.run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        if s.local_mode and self.token is None:
            self.token = Token.new()  # handed to the children in the environment
        rdv = s.rendezvous or Rendezvous("tcp", host="127.0.0.1", port=0)
        self.plan_ = RunPlan(self.run_id, self.topology, rdv, s.local_mode)
        return self.plan_

    def open(self, launch: Launch) -> None:
        """Open the store, start the local roles, announce the run and handshake.

        :raises RunRefused: the store cannot be opened, or the handshake refused the run.
        A role that never joined leaves the run DEGRADED (see :attr:`never_joined`)."""
        s, plan = self.settings, self.plan_
        assert plan is not None
        rdv, hosting = plan.rendezvous, s.hosts_store  # local mode: p0
        try:
            raw, port = open_store(
                rdv, host=hosting, timeout=s.join_timeout, dead_after=None if hosting else s.dead_after
            )
        except PortInUse as exc:
            raise RunRefused(f"kvtest: --rendezvous {rdv}: {exc}") from None
        except RendezvousError as exc:
            raise RunRefused(f"kvtest: {self.me}: {exc}") from None
        budget = self.thread_budget()
        if plan.local:
            rdv = Rendezvous("tcp", host=rdv.host, port=port)
            secrets = {TOKEN_ENV: self.token.text()} if self.token else None
            self.cluster = launch(plan, rdv, secrets, budget)
        exited = self.cluster.exited if self.cluster else None
        address = None if hosting or rdv.scheme != "tcp" else (rdv.host, port)
        self.store = RunStore(
            raw, self.run_id, self.me, PeerWatch(raw, s.dead_after, exited), token=self.token,
            address=address, warn=self.say, alive=self.last_round_trip, host_name=s.store_host_name(),
        )
        announcement = RunSeal(self.token, self.me).announce(self.run_id)
        raw.set(keys.CURRENT_RUN, announcement)
        self.start_heartbeat(rdv, port, keep=(keys.CURRENT_RUN, announcement), exited=exited)
        self.state = RunState.OPEN
        cluster = self.cluster
        where = f"local mode, logs in {cluster.logdir}" if cluster else f"rendezvous {rdv.describe()}"
        signed = f", signed with token {self.token.id}" if self.token else ""
        self.write(
            f"kvtest: run {self.run_id}, topology {self.topology} ({where}{signed}), backend "
            f"{self.backend_name} ({self.backend_why})"
        )
        warning = self.unauthenticated(rdv)
        if warning:
            self.write(warning)
        self.write(f"kvtest: {budget.describe()}")
        self.handshake = Handshake(self.store, self.hello(), self.topology.roles, s.join_timeout)
        try:
            self.handshake.claim()
            self.handshake.lead(exited=exited, grace=s.dead_after, where=rdv.describe())
        except PeerNeverJoined as exc:
            self.stop_threads()
            self.state = RunState.DEGRADED
            self.never_joined = exc
            self.write(f"kvtest: {exc}: every test that needs it errors at setup (an environment failure)")
        except BaseException:
            self.stop_threads()
            raise

    def announce(
        self, nodeid: str, roles: Sequence[str], next_for: Mapping[str, str | None], timeout: float
    ) -> TestScope:
        """Announce the next multi-role test under the next sequence number; its scope."""
        assert self.store is not None and self.state is RunState.OPEN
        seq = self.seq
        self.seq += 1
        try:
            self.store.set(keys.item(seq), TestAnnounce(nodeid, tuple(roles), dict(next_for)).to_json())
        except RendezvousError:
            pass  # the store is gone (hosted elsewhere under a launcher): the test fails on its first step
        return self.new_scope(seq, nodeid, roles, timeout)

    def stop_reason(self) -> str | None:
        """Why the run must stop after this test (a dead peer, the store lost), or None."""
        if self.dead:
            return "kvtest: " + "; ".join(self.dead.values()) + ": stopping the run"
        if self.store is not None and self.store.lost is not None:
            return f"kvtest: {self.store.lost}: stopping the run"
        return None

    def gather(self, phase: str) -> list[RoleResult]:
        """Every peer's outcome of ``phase`` of the current test (a dead one's death, once)."""
        assert self.scope is not None and self.store is not None
        scope = self.scope
        results = []
        for role in scope.peers:
            if role in self.dead:
                if phase != "teardown":  # a death is reported once, with the call
                    results.append(RoleResult(role, "failed", "", self.dead[role], secondary=True, died=True))
                continue
            key = keys.result(scope.seq, phase, role)
            try:
                data = self.store.wait(
                    key, what=f"{role}'s {phase} outcome", timeout=4 * scope.timeout, peers=[role],
                    shape=RESULT_SHAPE,
                )
                results.append(RoleResult.from_json(data, self.store.key(key), self.me))
            except PeerDead as exc:
                self.dead[role] = str(exc)
                if phase != "teardown" or not scope.peer_step(role):
                    results.append(RoleResult(role, "failed", exc.step or "", str(exc), died=True))
            except RendezvousError as exc:
                results.append(
                    RoleResult(role, "failed", scope.peer_step(role) or "?", str(exc), failure=classify(exc))
                )
        return results

    def finish(self) -> None:
        """Announce the end, collect the followers' goodbyes, stop the local roles and the threads."""
        if self.state is not RunState.OPEN:
            if self.cluster is not None:
                self.cluster.stop(grace=5)
            self.state = RunState.FINISHED
            return
        self.state = RunState.FINISHED
        assert self.store is not None
        try:
            self.store.set(keys.item(self.seq), End().to_json())
            for role in self.topology.roles:
                if role != self.me and role not in self.dead:
                    self.store.wait(keys.bye(role), what=f"{role} to leave", timeout=30, peers=[role])
        except RendezvousError as exc:
            self.write(f"kvtest: {exc}")
        if self.cluster is not None:
            self.cluster.stop(grace=20)
        self.stop_threads()
        if not self.settings.hosts_store:
            try:  # the role hosting the store (a launcher's rank 0) may leave now
                self.store.set(keys.CLOSED, True)
            except RendezvousError:
                pass

    def unreachable(self) -> bool:
        return bool(self.dead) or super().unreachable()
