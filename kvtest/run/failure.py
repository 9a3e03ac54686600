"""Environment vs product: which failures kvtest blames on the environment, and a test's verdict.

``environment``: the run could not test the product because something around it broke:

- a role never joined the run (:class:`PeerNeverJoined`: the leader waited ``--kv-join-timeout``);
- p0's rendezvous stopped answering: a network partition, or p0's host is down
  (:class:`~kvtest.run.rendezvous.RendezvousPartition`, which a follower raises when p0's address does
  not answer a new connection either);
- kvtest's own host checks failed (:class:`~kvtest.host.problems.EnvironmentProblem`: ``hccn_tool``
  missing or failing, no device IP, ``/etc/hccn.conf`` missing, no NPU free in the device pool, a
  failed npu ``link`` that :mod:`kvtest.host.linkcheck` explains by a silent peer device IP or
  different TLS switches).

``product``: everything else, on purpose: a wrong byte, an llm_datadist error status, a peer process
that died or stopped its heartbeat mid-test (a crash or a hang can be the product's), a timeout, and
p0's store gone while p0's host still answers (plain :class:`~kvtest.run.rendezvous.RendezvousLost`:
the port refuses, so p0's process died, as a crash of any other role would be counted).
When in doubt a failure is the product's, so nothing real is hidden from a regression gate.

A role that failed only because another role failed (``RoleResult.secondary``) takes the class of
the primary failure; a test is ``environment`` only when every primary failure is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from kvtest.host.problems import EnvironmentProblem
from kvtest.run.errors import RendezvousError, RendezvousPartition

if TYPE_CHECKING:
    from kvtest.run.messages import RoleResult

__all__ = [
    "ENVIRONMENT",
    "ENVIRONMENT_ERRORS",
    "FAILURE_CLASSES",
    "PRODUCT",
    "PeerNeverJoined",
    "Verdict",
    "classify",
    "failure_class",
    "resolve",
]

ENVIRONMENT = "environment"
PRODUCT = "product"
FAILURE_CLASSES = (ENVIRONMENT, PRODUCT)


class PeerNeverJoined(RendezvousError, EnvironmentProblem):
    """Roles of the run did not say hello within ``--kv-join-timeout``: they were never started, or
    cannot reach the rendezvous. ``str()`` is the cause, e.g. ``d0 never joined within 120s at ...``."""

    def __init__(self, roles: Sequence[str], timeout: float, where: str = "") -> None:
        at = f" at {where}" if where else ""
        super().__init__(f"{', '.join(roles)} never joined within {timeout:g}s{at}")
        self.roles = tuple(roles)


#: the exception types that make a failure ``environment``
ENVIRONMENT_ERRORS: tuple[type[BaseException], ...] = (EnvironmentProblem, RendezvousPartition)


def classify(exc: BaseException | None) -> str:
    """``environment`` for an :data:`ENVIRONMENT_ERRORS` exception, else ``product``."""
    return ENVIRONMENT if isinstance(exc, ENVIRONMENT_ERRORS) else PRODUCT


def failure_class(value: object) -> str | None:
    """``value`` when it is a failure class, else None (a peer's JSON is read with this)."""
    return value if isinstance(value, str) and value in FAILURE_CLASSES else None


class Verdict:
    """A test's failure class and its cause (the first primary failure's one line); both None when
    no role failed."""

    def __init__(self, failure: str | None, cause: str | None) -> None:
        self.failure = failure
        self.cause = cause

    def __repr__(self) -> str:
        return f"Verdict({self.failure!r}, {self.cause!r})"


#: a cause longer than this is cut (the role's whole message stays in its role entry)
CAUSE_LIMIT = 240


def _line(result: RoleResult) -> str:
    """The failure's one line; a message that already names its role is kept as it is."""
    if result.died or not result.step or result.message.startswith(f"{result.role} "):
        line = result.message
    else:
        line = result.headline
    line = " ".join(line.split())
    return line if len(line) <= CAUSE_LIMIT else line[: CAUSE_LIMIT - 3] + "..."


def resolve(results: Iterable[RoleResult]) -> tuple[list[RoleResult], Verdict]:
    """Every role's result with its failure class filled in, and the test's :class:`Verdict`.

    A failed primary result without a class (an older follower's) counts as ``product``, and so does
    a peer that died; secondary ones take the test's class. With secondary failures only (a follower
    that saw another role fail, and nothing more), the class is not known here: both None.
    """
    results = list(results)
    failed = [r for r in results if r.outcome == "failed"]
    primary = [r for r in failed if not r.secondary or r.died]
    product = [r for r in primary if (r.failure or PRODUCT) == PRODUCT]
    if not primary:
        verdict = Verdict(None, None)
    elif product:
        verdict = Verdict(PRODUCT, _line(product[0]))
    else:
        verdict = Verdict(ENVIRONMENT, _line(primary[0]))
    resolved = [
        r if r.outcome != "failed" else replace(
            r, failure=verdict.failure if r.secondary or r.failure is None else r.failure
        )
        for r in results
    ]
    return resolved, verdict
