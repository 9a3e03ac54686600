"""Roles, ranks and xPyD layouts: ``1p1d``, ``2p1d``, ... and role names such as ``p0`` or ``d1``."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_PER_SIDE", "Topology", "parse_topology", "role_name", "parse_role_name"]

#: link_clusters takes at most 16 clusters per call (LLM_CLUSTER_NUM_EXCEED_LIMIT)
MAX_PER_SIDE = 16

_TOPOLOGY = re.compile(r"^(\d+)p(\d+)d$", re.IGNORECASE)
_ROLE_NAME = re.compile(r"^([pd])(\d+)$")


@dataclass(frozen=True, order=True)
class Topology:
    """How many prefill (``p``) and decode (``d``) processes take part."""

    prompts: int
    decoders: int

    def __str__(self) -> str:
        return f"{self.prompts}p{self.decoders}d"

    def count(self, role: str) -> int:
        return self.prompts if role == "p" else self.decoders

    @property
    def roles(self) -> list[str]:
        """Every role name, leader first: ``["p0", "p1", "d0"]`` for ``2p1d``."""
        return [role_name("p", i) for i in range(self.prompts)] + [
            role_name("d", i) for i in range(self.decoders)
        ]

    def covers(self, other: Topology) -> bool:
        """True when every role of ``other`` exists in this topology."""
        return self.prompts >= other.prompts and self.decoders >= other.decoders

    def union(self, other: Topology) -> Topology:
        return Topology(max(self.prompts, other.prompts), max(self.decoders, other.decoders))


def parse_topology(text: str) -> Topology:
    """Parse ``XpYd``; raise ValueError with the reason and the accepted form."""
    match = _TOPOLOGY.match(text.strip())
    if not match:
        raise ValueError("expected XpYd with X and Y from 1 to 16, e.g. 1p1d, 2p1d, 2p2d")
    prompts, decoders = int(match.group(1)), int(match.group(2))
    for count, side in ((prompts, "p"), (decoders, "d")):
        if not 1 <= count <= MAX_PER_SIDE:
            raise ValueError(
                f"the number of {side} processes must be 1..{MAX_PER_SIDE} "
                f"(p0 leads every run and d pulls need a peer), e.g. 1p1d"
            )
    return Topology(prompts, decoders)


def role_name(role: str, rank: int) -> str:
    return f"{role}{rank}"


def parse_role_name(name: str) -> tuple[str, int]:
    match = _ROLE_NAME.match(name)
    if not match:
        raise ValueError(f"not a role name: {name!r} (expected p0, d1, ...)")
    return match.group(1), int(match.group(2))
