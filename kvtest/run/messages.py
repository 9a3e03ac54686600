"""Every message the roles of a run exchange through the store, as a frozen dataclass, with its
JSON shape, encoder (``to_json``) and decoder (``from_json``) here and nowhere else.

A decoder refuses a value without its message's shape with :class:`kvtest.run.errors.ProtocolError`
(one line: who read what under which key). The store checks the same shapes while it waits
(``RunStore.wait(shape=...)``), so a stranger's value fails at the read.

==============  =====================  ==================================  ==========
message         key (kvtest.run.keys)  written by                          read by
==============  =====================  ==================================  ==========
Claim           claim/ROLE             every role, once                    (compare-and-set)
Hello           hello/ROLE             every role                          p0
Verdict         verdict                p0                                  followers
TestAnnounce    item/SEQ               p0, before each multi-role test     followers
End             item/SEQ               p0, after the last test             followers
RoleResult      t/SEQ/PHASE/ROLE       every role in the test              p0
Abort           t/SEQ/abort            the first role that fails           every role
Bye             bye/ROLE               followers, leaving                  p0
==============  =====================  ==================================  ==========
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvtest import __version__
from kvtest.roles.topology import Topology
from kvtest.run.errors import ProtocolError
from kvtest.run.failure import failure_class

__all__ = [
    "ABORT_SHAPE",
    "BYE_SHAPE",
    "CLAIM_SHAPE",
    "HELLO_SHAPE",
    "IDLE_LIMIT",
    "ITEM_SHAPE",
    "RESULT_SHAPE",
    "STACK_KEYS",
    "VERDICT_SHAPE",
    "Abort",
    "Bye",
    "Claim",
    "End",
    "Hello",
    "RoleResult",
    "Shape",
    "TestAnnounce",
    "Verdict",
    "check_shape",
    "collection_digest",
    "compare_hello",
    "read_item",
    "stack_differences",
]

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


def check_shape(value: Any, shape: Shape, full: str, me: str) -> dict[str, Any]:
    """``value`` as an object with every member of ``shape``; else a one-line :class:`ProtocolError`."""
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
    raise ProtocolError(
        f"{me} read a value of the wrong shape under {full!r} ({problem}): refusing it; is a stranger, "
        "or another kvtest version, writing to this rendezvous?"
    )


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
    def from_json(cls, data: Any, where: str = "a hello", me: str = "?") -> Hello:
        data = check_shape(data, HELLO_SHAPE, where, me)
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
    def from_json(cls, data: Any, where: str = "a role's result", me: str = "?") -> RoleResult:
        data = check_shape(data, RESULT_SHAPE, where, me)
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


@dataclass(frozen=True)
class Claim:
    """A role's claim of its slot in the run: the first one stands."""

    host: str
    pid: int
    nonce: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Any, where: str = "a claim", me: str = "?") -> Claim:
        data = check_shape(data, CLAIM_SHAPE, where, me)
        return cls(data["host"], data["pid"], data["nonce"])


CLAIM_SHAPE: Shape = {"host": str, "pid": int, "nonce": str}


@dataclass(frozen=True)
class Verdict:
    """p0's verdict on the handshake: the run starts (``ok``) or not (``reason``), and how the roles'
    stacks differ."""

    ok: bool
    reason: str = ""
    stack: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        if not self.ok:
            return {"ok": False, "reason": self.reason}
        return {"ok": True, "stack": list(self.stack)}

    @classmethod
    def from_json(cls, data: Any, where: str = "a verdict", me: str = "?") -> Verdict:
        data = check_shape(data, VERDICT_SHAPE, where, me)
        stack = data.get("stack")
        return cls(
            data["ok"],
            str(data.get("reason", "")),
            tuple(str(d) for d in stack) if isinstance(stack, list) else (),
        )


VERDICT_SHAPE: Shape = {"ok": bool}


@dataclass(frozen=True)
class TestAnnounce:
    """p0's announcement of the next multi-role test: its id, the roles in it, and what each role
    runs next (so its fixtures of wider scope survive between tests)."""

    __test__ = False  # not a pytest test class

    nodeid: str
    roles: tuple[str, ...]
    next: Mapping[str, str | None]

    def to_json(self) -> dict[str, Any]:
        return {"nodeid": self.nodeid, "roles": list(self.roles), "next": dict(self.next)}

    @classmethod
    def from_json(cls, data: Any, where: str = "an announcement", me: str = "?") -> TestAnnounce:
        data = check_shape(data, ITEM_SHAPE, where, me)
        roles, nxt = data["roles"], data["next"]
        if not all(isinstance(r, str) for r in roles) or not all(
            isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in nxt.items()
        ):
            raise ProtocolError(
                f"{me} read a value of the wrong shape under {where!r} (roles or next that are not "
                "role names and test ids): refusing it; is a stranger, or another kvtest version, "
                "writing to this rendezvous?"
            )
        return cls(data["nodeid"], tuple(roles), dict(nxt))


#: what p0's announcement of a test must hold for a follower to run it
ITEM_SHAPE: Shape = {"nodeid": str, "roles": list, "next": dict}


@dataclass(frozen=True)
class End:
    """p0's last announcement: no more tests, leave."""

    def to_json(self) -> dict[str, Any]:
        return {"end": True}


def read_item(data: Any, where: str = "an announcement", me: str = "?") -> TestAnnounce | End:
    """What p0 announced under ``item/SEQ``: a test, or the end."""
    if isinstance(data, dict) and data.get("end") is True:
        return End()
    return TestAnnounce.from_json(data, where, me)


@dataclass(frozen=True)
class Abort:
    """The first failure of a test, so every other role stops waiting for it."""

    role: str
    step: str
    message: str
    skipped: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Any, where: str = "an abort", me: str = "?") -> Abort:
        data = check_shape(data, ABORT_SHAPE, where, me)
        return cls(data["role"], data["step"], data["message"], data["skipped"])


ABORT_SHAPE: Shape = {"role": str, "step": str, "message": str, "skipped": bool}


@dataclass(frozen=True)
class Bye:
    """A follower leaving: how many tests failed on its side."""

    failed: int

    def to_json(self) -> dict[str, Any]:
        return {"failed": self.failed}

    @classmethod
    def from_json(cls, data: Any, where: str = "a goodbye", me: str = "?") -> Bye:
        return cls(check_shape(data, BYE_SHAPE, where, me)["failed"])


BYE_SHAPE: Shape = {"failed": int}
