"""Two processes, every transfer API, over TCP (UCX_TLS=tcp), bytes checked (shared memory: tests/samples)."""

from __future__ import annotations

import pytest
from sim_scenarios import SCENARIOS

TRANSFERS = [name for name in SCENARIOS if name != "stall"]  # stall is a fault flow (test_sim_faults)


@pytest.mark.parametrize("scenario", TRANSFERS)
def test_pair(peer, ports, scenario):
    peer.run(scenario, ports)
