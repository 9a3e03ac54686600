"""Two processes, every transfer API, over shared memory and over TCP (UCX_TLS=tcp), bytes checked."""

from __future__ import annotations

import pytest

SCENARIOS = [
    "pull_cache",
    "pull_blocks",
    "cache_to_blocks",
    "push_blocks",
    "push_cache",
    "switch_role",
    "transfer_cache_async",
    "hixl",
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pair(peer, ports, scenario):
    peer.run(scenario, ports)
