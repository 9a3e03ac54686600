"""A p0/d0 pair of :class:`~kvtest.node.Node` objects on the npu backend (through conftest.py's fakes),
sharing one in-process store: what the npu tests need to drive a two-sided ``link``."""

from __future__ import annotations

import threading
from typing import Any

from kvtest.backends import npu
from kvtest.node import Node
from kvtest.roles.topology import Topology
from kvtest.run.rendezvous import RunStore
from kvtest.run.scope import TestScope
from kvtest.settings import Settings

__all__ = ["link_both", "node", "scope"]


def scope(raw: Any, me: str) -> TestScope:
    return TestScope(RunStore(raw, "r", me), 0, me, ("p0", "d0"), Topology(1, 1), 10.0)


def node(raw: Any, me: str, device_id: int, settings: Settings) -> Node:
    backend = npu.load()
    backend.set_device(device_id)
    made = Node(scope(raw, me), backend, settings, {"p0": 1, "d0": 2}[me], device_id)
    made.init({"ge.exec.deviceId": str(device_id)}, me[0])
    return made


def link_both(p: Node, d: Node) -> dict[str, BaseException]:
    """Both members call ``link``, as every two-sided sample does; return what each raised."""
    errors: dict[str, BaseException] = {}

    def run(member: Node, peer: str) -> None:
        try:
            member.link([peer])
        except BaseException as exc:  # reported to the test below
            errors[member.kv.me] = exc

    thread = threading.Thread(target=run, args=(d, "p0"))
    thread.start()
    run(p, "d0")
    thread.join(20)
    assert not thread.is_alive(), "d0's link did not return"
    return errors
