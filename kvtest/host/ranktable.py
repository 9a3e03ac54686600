"""The rank table and ``cluster_rank_info`` for the two-sided link (``LLMDataDist.link``).

Both sides of a link must pass the *same* rank table string, so it is built from facts both sides
hold (every member's host IP, device id, device IP and rank) and never from local state. The layout
is the samples' (``pull_cache``, ``pull_blocks``, ``pull_from_cache_to_blocks``)::

    {"server_count": "2", "status": "completed", "version": "1.2",
     "server_list": [{"device": [{"device_id": "0", "device_ip": "192.168.1.1", "rank_id": "0"}],
                      "host_ip": "10.10.10.0", "server_id": "1"},
                     {"device": [{"device_id": "0", "device_ip": "192.168.2.1", "rank_id": "1"}],
                      "host_ip": "10.10.10.1", "server_id": "2"}]}

Every value is a string. Members on one host share one server entry (the samples' single-host
mode: one server, two devices); servers are numbered from ``"1"`` in rank order.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "MAX_MEMBERS",
    "MIN_MEMBERS",
    "RANK_TABLE_VERSION",
    "RankEntry",
    "RankTableError",
    "build_rank_table",
    "cluster_rank_info",
    "rank_table_json",
]

RANK_TABLE_VERSION = "1.2"
#: ``link`` accepts 2 to 4 members in one communication domain
MIN_MEMBERS = 2
MAX_MEMBERS = 4


class RankTableError(ValueError):
    """The members cannot form a valid rank table; the message names the offending entry."""


@dataclass(frozen=True)
class RankEntry:
    """One member of a two-sided link: where it runs and which rank it takes."""

    host_ip: str
    #: the *physical* device id (what ``hccn_tool -i`` and ``/dev/davinciN`` use)
    device_id: int
    device_ip: str
    rank: int


EntryLike = Union[RankEntry, Sequence[Any]]


def _entry(item: EntryLike) -> RankEntry:
    if isinstance(item, RankEntry):
        return item
    if len(item) != 4:
        raise RankTableError(f"rank table entry {item!r} must be (host_ip, device_id, device_ip, rank)")
    host_ip, device_id, device_ip, rank = item
    return RankEntry(str(host_ip), int(device_id), str(device_ip), int(rank))


def _check_ip(value: str, what: str, entry: RankEntry) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise RankTableError(f"rank {entry.rank}: {what} {value!r} is not an IPv4 address") from None


def _validated(items: Iterable[EntryLike]) -> list[RankEntry]:
    entries = sorted((_entry(item) for item in items), key=lambda e: e.rank)
    if not MIN_MEMBERS <= len(entries) <= MAX_MEMBERS:
        raise RankTableError(
            f"a two-sided link takes {MIN_MEMBERS} to {MAX_MEMBERS} members, got {len(entries)}"
        )
    ranks = [e.rank for e in entries]
    if ranks != list(range(len(entries))):
        raise RankTableError(f"ranks must be 0..{len(entries) - 1} with no gaps or repeats, got {ranks}")
    seen: dict[tuple[str, int], int] = {}
    for e in entries:
        _check_ip(e.host_ip, "host_ip", e)
        _check_ip(e.device_ip, "device_ip", e)
        if e.device_id < 0:
            raise RankTableError(f"rank {e.rank}: device_id {e.device_id} is negative")
        other = seen.setdefault((e.host_ip, e.device_id), e.rank)
        if other != e.rank:
            raise RankTableError(
                f"ranks {other} and {e.rank} both use device {e.device_id} on host {e.host_ip}: "
                "each member needs its own NPU"
            )
    return entries


def build_rank_table(entries: Iterable[EntryLike]) -> dict[str, Any]:
    """The rank table as a dict, in the samples' key order.

    :param entries: :class:`RankEntry` or ``(host_ip, device_id, device_ip, rank)`` tuples, in any order.
    :raises RankTableError: on a bad member count, rank set, address, or a device used twice.
    """
    servers: dict[str, list[RankEntry]] = {}
    for e in _validated(entries):
        servers.setdefault(e.host_ip, []).append(e)
    server_list = [
        {
            "device": [
                {"device_id": str(e.device_id), "device_ip": e.device_ip, "rank_id": str(e.rank)}
                for e in members
            ],
            "host_ip": host_ip,
            "server_id": str(index),
        }
        for index, (host_ip, members) in enumerate(servers.items(), start=1)
    ]
    return {
        "server_count": str(len(server_list)),
        "status": "completed",
        "version": RANK_TABLE_VERSION,
        "server_list": server_list,
    }


def rank_table_json(entries: Iterable[EntryLike]) -> str:
    """The rank table string for ``LLMDataDist.link``: identical on every member for the same entries."""
    return json.dumps(build_rank_table(entries))


def cluster_rank_info(cluster_ids: Sequence[int] | Mapping[int, int]) -> dict[int, int]:
    """``{cluster_id: rank}`` for ``LLMDataDist.link``, ranks ascending in dict order.

    :param cluster_ids: the members' cluster ids in rank order (rank *i* is ``cluster_ids[i]``), or a
        ``{cluster_id: rank}`` mapping to validate and reorder.
    :raises RankTableError: on a bad member count, a repeated cluster id, or ranks that are not 0..n-1.
    """
    if isinstance(cluster_ids, Mapping):
        pairs = sorted(((int(r), int(c)) for c, r in cluster_ids.items()))
        ranks = [r for r, _ in pairs]
        ordered = [c for _, c in pairs]
        if ranks != list(range(len(pairs))):
            raise RankTableError(f"cluster ranks must be 0..{len(pairs) - 1}, got {sorted(ranks)}")
    else:
        ordered = [int(c) for c in cluster_ids]
    if not MIN_MEMBERS <= len(ordered) <= MAX_MEMBERS:
        raise RankTableError(
            f"cluster_rank_info takes {MIN_MEMBERS} to {MAX_MEMBERS} clusters, got {len(ordered)}"
        )
    if len(set(ordered)) != len(ordered):
        raise RankTableError(f"cluster ids must be distinct, got {ordered}")
    if any(c < 0 for c in ordered):
        raise RankTableError(f"cluster ids are uint64, got {ordered}")
    return {cluster: rank for rank, cluster in enumerate(ordered)}
