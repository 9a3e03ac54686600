"""kvtest's own exceptions for the run across processes.

Every one is a :class:`RendezvousError` whose ``str()`` is one line naming who, what and how long.
The hook adapters translate the ones that mean a misconfigured run into ``pytest.UsageError``; the
protocol objects (:mod:`kvtest.run.leader`, :mod:`kvtest.run.follower`) never import pytest.
"""

from __future__ import annotations

__all__ = [
    "PeerDead",
    "PeerFailed",
    "PortInUse",
    "ProtocolError",
    "RendezvousError",
    "RendezvousLost",
    "RendezvousPartition",
    "RendezvousTimeout",
    "RunRefused",
]


class RendezvousError(Exception):
    """A failure of the rendezvous; ``str()`` is one line that names who, what and how long."""


class RendezvousTimeout(RendezvousError):
    pass


class RendezvousLost(RendezvousError):
    """The store itself is unreachable: the leader (which hosts it) is gone."""


class RendezvousPartition(RendezvousLost):
    """p0's host stopped answering: a network partition, or the host itself is down."""


class PortInUse(RendezvousError):
    pass


class ProtocolError(RendezvousError):
    """A message read from the store that does not have its message's shape (:mod:`kvtest.run.messages`)."""


class RunRefused(Exception):
    """The run cannot start as configured (a handshake refusal, a taken role, another run's store);
    ``str()`` is the one-line message, and the hook adapter raises it as ``pytest.UsageError``."""


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
