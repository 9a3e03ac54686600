"""Listen ports: the roles of a run never draw the same one (cluster ids are made from ip:port)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from kvtest import node as node_module
from kvtest.node import PORT_RANGE, Node, free_port
from kvtest.roles.topology import parse_topology


class _SameDraws(random.Random):
    """Every instance draws the same numbers: two processes whose random ports collide."""

    def __init__(self) -> None:
        super().__init__(1234)


def _port_of(role: str, topology: str) -> int:
    fake = SimpleNamespace(kv=SimpleNamespace(topology=parse_topology(topology), me=role), host_ip="127.0.0.1")
    return Node.free_port(fake)  # type: ignore[arg-type]


def test_roles_with_the_same_draws_get_different_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module.random, "Random", _SameDraws)
    ports = {role: _port_of(role, "2p2d") for role in parse_topology("2p2d").roles}
    assert len(set(ports.values())) == 4, ports


def test_each_slot_draws_from_its_own_part() -> None:
    width = (PORT_RANGE[1] - PORT_RANGE[0]) // 4
    for slot in range(4):
        low = PORT_RANGE[0] + slot * width
        for _ in range(20):
            assert low <= free_port("127.0.0.1", slot, 4) < low + width


def test_a_slot_outside_the_parts_is_refused() -> None:
    with pytest.raises(ValueError, match="port slot 4 is not in 0..3"):
        free_port("127.0.0.1", 4, 4)
