"""A finalized LLMDataDist's NIXL agent is reused by the next init of the process, with a new version."""

from __future__ import annotations

import datetime

import torch.distributed as dist

from kvtest.backends import sim
from kvtest.backends.sim import control, transport


def _init(api, cluster_id):
    config = api.LLMConfig()
    config.device_id = 0
    config.enable_cache_manager = True
    dd = api.LLMDataDist(api.LLMRole.PROMPT, cluster_id)
    dd.init(config.generate_options())
    return dd


def test_the_next_init_reuses_a_clean_agent_and_publishes_a_new_version():
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=30))
    sim.configure(store, "agent-pool/", "p0")
    plane = control.current()
    assert plane is not None
    first = _init(sim, 1)
    agent = first._transport._agent
    record = plane.fetch(plane.key("agent", 1))
    first.finalize()
    assert plane.fetch(plane.key("agent", 1)) is None  # peers see the cluster as gone
    assert any(idle is agent for _, idle in transport._idle_agents)
    second = _init(sim, 1)
    try:
        assert second._transport._agent is agent
        again = plane.fetch(plane.key("agent", 1))
        # same agent name, a version never published before: peers reload its (new) metadata
        assert again["agent"] == record["agent"] and again["version"] > record["version"]
        assert not second._transport._regs and not second._transport._peer_versions
    finally:
        second.finalize()


def test_an_agent_with_a_transfer_in_flight_is_not_reused():
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=30))
    sim.configure(store, "agent-pool-busy/", "p0")
    dd = _init(sim, 2)
    busy = dd._transport
    agent = busy._agent
    busy._in_flight = 1  # as while another thread's transfer runs
    try:
        dd.finalize()
    finally:
        busy._in_flight = 0
    assert not any(idle is agent for _, idle in transport._idle_agents)
