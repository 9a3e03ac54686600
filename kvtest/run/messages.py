"""The leader/follower protocol.

p0 (the leader) runs pytest's own loop. Before each multi-role test it announces the test under the
next sequence number; every follower waits for announcements, runs exactly the announced tests in
that order and publishes each outcome. The leader merges them into its own report: a test passes
only when every role passed.

Session start is a handshake: each role publishes kvtest version, backend, topology, seed and a
digest of its collection; p0 compares and publishes a verdict that every role obeys.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from kvtest import __version__
from kvtest.run.failure import PeerNeverJoined, failure_class
from kvtest.run.rendezvous import (
    ForgedValue,
    RendezvousError,
    RendezvousTimeout,
    RunStore,
    Shape,
    TokenMismatch,
    keys,
)
from kvtest.run.topology import Topology

__all__ = [
    "HELLO_SHAPE",
    "RESULT_SHAPE",
    "STACK_KEYS",
    "VERDICT_SHAPE",
    "Hello",
    "RoleResult",
    "collection_digest",
    "compare_hello",
    "stack_differences",
]

#: a follower may wait this long for the next announcement (the leader's heartbeat catches a dead one)
IDLE_LIMIT = 6 * 3600.0


def collection_digest(nodeids: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for nodeid in sorted(nodeids):
        digest.update(nodeid.encode() + b"\n")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Hello:
    """What a role says about itself at the handshake."""

    role: str
    version: str
    backend: str
    topology: str
    seed: int
    profile: str
    digest: str
    nodeids: tuple[str, ...]
    host: str
    pid: int
    #: the role's environment fingerprint (:func:`kvtest.host.fingerprint.fingerprint`); optional in
    #: the JSON form, so a hello from an older kvtest is read (and refused for its version)
    fingerprint: Mapping[str, str] = field(default_factory=dict)
    require_same_stack: bool = False  # this role was started with --kv-require-same-stack

    @classmethod
    def make(
        cls, role: str, backend: str, topology: Topology, seed: int, profile: str, nodeids: Sequence[str],
        fingerprint: Mapping[str, str] | None = None, require_same_stack: bool = False,
    ) -> Hello:
        return cls(
            role,
            __version__,
            backend,
            str(topology),
            seed,
            profile,
            collection_digest(nodeids),
            tuple(sorted(nodeids)),
            socket.gethostname(),
            os.getpid(),
            dict(fingerprint or {}),
            require_same_stack,
        )

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "nodeids": list(self.nodeids), "fingerprint": dict(self.fingerprint)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Hello:
        raw = data.get("fingerprint")
        fingerprint = (
            {str(k): str(v) for k, v in raw.items() if isinstance(v, str)} if isinstance(raw, dict) else {}
        )
        return cls(
            **{**{name: data[name] for name in HELLO_SHAPE}, "nodeids": tuple(data["nodeids"])},
            fingerprint=fingerprint,
            require_same_stack=data.get("require_same_stack") is True,
        )


#: what a hello must hold to be read (see :func:`kvtest.run.rendezvous.check_shape`)
HELLO_SHAPE: Shape = {
    "role": str,
    "version": str,
    "backend": str,
    "topology": str,
    "seed": int,
    "profile": str,
    "digest": str,
    "nodeids": list,
    "host": str,
    "pid": int,
}
VERDICT_SHAPE: Shape = {"ok": bool}


def _sample(ids: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def compare_hello(leader: Hello, other: Hello) -> list[str]:
    """The differences that stop a run, each as a short phrase; empty when they agree."""
    diffs = [
        f"{name} {getattr(leader, name)!r} on {leader.role} but {getattr(other, name)!r} on {other.role}"
        for name in ("version", "backend", "topology", "seed", "profile")
        if getattr(leader, name) != getattr(other, name)
    ]
    if leader.digest != other.digest:
        mine, theirs = set(leader.nodeids), set(other.nodeids)
        only_leader = sorted(mine - theirs)
        only_other = sorted(theirs - mine)
        parts = []
        if only_leader:
            parts.append(f"{len(only_leader)} only on {leader.role} ({_sample(only_leader)})")
        if only_other:
            parts.append(f"{len(only_other)} only on {other.role} ({_sample(only_other)})")
        diffs.append("collected tests differ: " + "; ".join(parts or ["same ids, different digest"]))
    return diffs


#: the fingerprint facts that must agree between roles (``--kv-require-same-stack``), in print order.
#: llm_datadist's own package version says little: hicann/hixl src/python/llm_datadist/setup.py pins
#: version='0.0.1' for every release, so a CANN difference (which ships it) is what tells two apart.
STACK_KEYS = ("cann", "driver", "firmware", "torch", "torch_npu", "llm_datadist")


def stack_differences(hellos: Sequence[Hello]) -> list[str]:
    """Each stack fact on which a role differs from the first (p0), as a phrase
    ("llm_datadist 1.0.0 on p0 but 1.1.0 on d0"); a hello without a fingerprint is left out."""
    known = [h for h in hellos if h.fingerprint]
    if len(known) < 2:
        return []
    first, diffs = known[0], []
    for key in STACK_KEYS:
        mine = first.fingerprint.get(key, "absent")
        for other in known[1:]:
            theirs = other.fingerprint.get(key, "absent")
            if theirs != mine:
                diffs.append(f"{key} {mine} on {first.role} but {theirs} on {other.role}")
    return diffs


@dataclass(frozen=True)
class RoleResult:
    """One role's outcome of one phase of one test, as published to the leader."""

    role: str
    outcome: str  # passed | failed | skipped
    step: str = ""
    message: str = ""
    details: str = ""
    secondary: bool = False  # failed only because another role failed or died
    died: bool = False  # the role's process is gone; message says how
    duration: float = 0.0
    transfers: tuple[dict[str, Any], ...] = ()
    #: "environment" or "product" for a failure (kvtest.run.failure); optional in the JSON
    failure: str | None = None
    #: the known issue this role expects and what it saw of its symptom
    #: (kvtest.results.known_issues.expectation); optional in the JSON
    known_issue: dict[str, Any] | None = None
    #: wall seconds by phase so far in this test (kvtest.results.metrics.PhaseClock); optional in the JSON
    phases: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "transfers": list(self.transfers)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoleResult:
        return cls(
            **{**{name: data[name] for name in RESULT_SHAPE}, "transfers": tuple(data["transfers"])},
            failure=failure_class(data.get("failure")),
            known_issue=_known_issue(data.get("known_issue")),
            phases=_phases(data.get("phases")),
        )

    @property
    def headline(self) -> str:
        if self.died:
            return self.message
        return f"{self.role} failed at step {self.step!r}: {self.message}"


def _phases(data: object) -> dict[str, float] | None:
    if not isinstance(data, dict):
        return None
    numbers = {k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {str(k): float(v) for k, v in numbers.items()}


def _known_issue(data: object) -> dict[str, Any] | None:
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        return None
    shown = data.get("shown")
    return {"id": data["id"], "shown": [str(s) for s in shown] if isinstance(shown, list) else []}


RESULT_SHAPE: Shape = {
    "role": str,
    "outcome": str,
    "step": str,
    "message": str,
    "details": str,
    "secondary": bool,
    "died": bool,
    "duration": (int, float),
    "transfers": list,
}


class Handshake:
    """Joining a run and agreeing on it; used by the leader and by the followers."""

    def __init__(self, store: RunStore, me: Hello, roles: Sequence[str], timeout: float) -> None:
        self.store = store
        self.me = me
        self.roles = tuple(roles)
        self.timeout = timeout
        self.hellos: dict[str, Hello] = {me.role: me}  # p0: every hello it read, its own first
        self.stack: list[str] = []  # p0: how the roles' stacks differ (a follower: as p0 said)

    def claim(self) -> None:
        """Take this role's slot; a second process claiming the same role is refused.

        The claim is a signed value, not a counter: with a token, a stranger's claim is refused and
        replaced, and only a role holding the run's token can take the slot first."""
        mine = {"host": self.me.host, "pid": self.me.pid, "nonce": uuid.uuid4().hex}
        if self.store.set_if_absent(keys.claim(self.me.role), mine) != mine:
            raise pytest.UsageError(
                f"kvtest: role {self.me.role} is already taken in run {self.store.run_id}: "
                "start each role once (check --role/--rank on each host); with a file rendezvous, "
                "an earlier run may have used this --run-id: give a new one"
            )

    def lead(self, exited: Any = None, grace: float = 5.0, where: str = "") -> None:
        """p0: wait for every other role's hello, compare, publish the verdict; raise on a mismatch.

        A hello signed with another token (or none) is waited past for ``grace`` seconds, in case it
        is a stranger's and the real role's is on its way; then the run is refused.

        :raises PeerNeverJoined: roles that never said hello in time (an environment failure, not a
            usage error: the session records the run's tests as errors); ``where`` names the
            rendezvous in its message.
        :raises pytest.UsageError: every other refusal (versions, collection, token, a bad hello).
        """
        self.store.set(keys.hello(self.me.role), self.me.to_json())
        problems: list[str] = []
        missing: list[str] = []
        deadline = time.monotonic() + self.timeout
        for role in self.roles:
            if role == self.me.role:
                continue
            try:
                other = Hello.from_json(
                    self.store.wait(
                        keys.hello(role),
                        what=f"{role} to join",
                        timeout=max(deadline - time.monotonic(), 0.01),
                        peers=[role] if exited is not None else (),
                        shape=HELLO_SHAPE,
                        forged_grace=grace,
                    )
                )
            except (ForgedValue, TokenMismatch) as exc:
                self._refuse(
                    f"{role} was started with another token or none, refusing it: {exc}; give every "
                    "role the same --kv-token-file (or KVTEST_TOKEN)"
                )
            except RendezvousTimeout:
                missing.append(role)
                continue
            except RendezvousError as exc:
                self._refuse(f"{role} did not join: {exc}")
            problems += [f"{role}: {d}" for d in compare_hello(self.me, other)]
            self.hellos[role] = other
        self.stack = stack_differences(list(self.hellos.values()))
        strict = [h.role for h in self.hellos.values() if h.require_same_stack]
        if self.stack and strict:
            problems.append(
                f"stack differs between roles ({', '.join(strict)} started with --kv-require-same-stack): "
                + "; ".join(self.stack)
            )
        if problems:
            self._refuse("roles disagree, refusing to start: " + "; ".join(problems))
        if missing:
            never = PeerNeverJoined(missing, self.timeout, where)
            try:  # a role that comes late reads the refusal instead of waiting for tests
                self.store.set(keys.VERDICT, {"ok": False, "reason": str(never)})
            except RendezvousError:
                pass
            raise never
        self.store.set(keys.VERDICT, {"ok": True, "stack": self.stack})

    def _refuse(self, reason: str) -> None:
        self.store.set(keys.VERDICT, {"ok": False, "reason": reason})
        raise pytest.UsageError(f"kvtest: {reason}")

    def follow(self) -> None:
        """A follower: say hello, then obey p0's verdict."""
        self.store.set(keys.hello(self.me.role), self.me.to_json())
        verdict = self.store.wait(
            keys.VERDICT,
            what="p0's verdict on the handshake",
            timeout=self.timeout,
            peers=["p0"],
            shape=VERDICT_SHAPE,
        )
        if not verdict.get("ok"):
            raise pytest.UsageError(f"kvtest: p0 refused the run: {verdict.get('reason')}")
        stack = verdict.get("stack")
        self.stack = [str(d) for d in stack] if isinstance(stack, list) else []
