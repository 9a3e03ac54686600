"""A run's frozen plan and its explicit state, shared by :class:`kvtest.run.leader.Leader` and
:class:`kvtest.run.follower.Follower`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from kvtest.roles.topology import Topology
from kvtest.settings import Rendezvous

__all__ = ["RunPlan", "RunState"]


class RunState(Enum):
    """Where a role's run stands. The leader goes IDLE -> OPEN -> FINISHED, or IDLE -> DEGRADED (a
    role never joined: each multi-role test errors at setup) -> FINISHED; a follower IDLE -> OPEN ->
    FINISHED. Tests are announced and reported only while OPEN."""

    IDLE = "idle"
    OPEN = "open"
    DEGRADED = "degraded"
    FINISHED = "finished"


@dataclass(frozen=True)
class RunPlan:
    """What the leader decided before opening the run: fixed from then on."""

    run_id: str
    topology: Topology
    rendezvous: Rendezvous
    local: bool  # local mode: the leader starts every other role on this host
