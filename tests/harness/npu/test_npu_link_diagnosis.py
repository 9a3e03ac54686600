"""A failed two-sided ``link`` on npu is the environment's when the device network explains it.

Through the fakes in conftest.py (``hccn_tool``, llm_datadist, torch_npu): a peer device IP that does
not answer ``hccn_tool -ping``, or two devices of one host with different TLS switches, turn the
failure into a :class:`DeviceNetworkProblem` (``environment``); a link that fails on a healthy
network stays llm_datadist's own error (``product``).
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from npu_pair import link_both, node

from kvtest.host.linkcheck import DeviceNetworkProblem, LinkPeer, explain_link_failure
from kvtest.run.failure import classify
from kvtest.settings import Settings

NIC = "10.0.0.5"
D0 = LinkPeer("d0", NIC, 1, "192.168.1.2")


def test_a_silent_peer_device_ip_is_named(fake_hccn, fake_dev):
    fake_hccn.ping = {"192.168.1.2": 0}
    fake_hccn.install()
    problem = explain_link_failure(0, NIC, [D0])
    assert isinstance(problem, DeviceNetworkProblem) and classify(problem) == "environment"
    assert str(problem) == (
        "d0's device IP 192.168.1.2 does not answer hccn_tool -i 0 -ping (0 of 3 replies): check cabling, "
        "netmask and gateway (hccn_tool -i 0 -ip -g / -link -g / -gateway -g)"
    )


def test_different_tls_on_one_host_is_named(fake_hccn, fake_dev):
    fake_hccn.tls = {0: 0, 1: 1}
    fake_hccn.install()
    problem = explain_link_failure(0, NIC, [D0])
    assert problem is not None and str(problem).startswith(
        "TLS is off on npu 0 but on on d0's npu 1: devices with different TLS settings cannot link"
    )
    # a peer on another host: its TLS is its own host's to read (kvtest doctor --peer compares them)
    assert explain_link_failure(0, NIC, [LinkPeer("d0", "10.0.0.6", 1, "192.168.1.2")]) is None


def test_a_check_that_cannot_run_blames_nothing(no_hccn, fake_dev):
    assert explain_link_failure(0, NIC, [D0]) is None  # hccn_tool missing: no verdict, the product's


def test_a_healthy_network_blames_nothing(fake_hccn, fake_dev):
    fake_hccn.install()
    assert explain_link_failure(0, NIC, [D0]) is None
    assert fake_hccn.calls() == ["-i 0 -ping -g address 192.168.1.2", "-i 0 -tls -g", "-i 1 -tls -g"]


# -- through Node.link, both members ---------------------------------------------------------------


def _link_both(raw: Any) -> dict[str, BaseException]:
    settings = Settings(local_host_ip=NIC)
    return link_both(node(raw, "p0", 0, settings), node(raw, "d0", 1, settings))


@pytest.fixture
def failing_link(fake_npu_stack, monkeypatch):
    """``query_register_mem_status`` says FAILED, as llm_datadist does for a link that cannot form."""
    llm = sys.modules["llm_datadist"]
    monkeypatch.setattr(llm.LLMDataDist, "query_register_mem_status",
                        lambda self, comm_id: llm.RegisterMemStatus.FAILED)


def test_a_failed_link_over_a_silent_device_network_is_the_environments(
    fake_dev, fake_hccn, failing_link, store
):
    fake_hccn.ping = {"192.168.1.2": 0}  # p0 cannot reach d0's device; d0 reaches p0's
    fake_hccn.install()
    errors = _link_both(store)
    assert isinstance(errors["p0"], DeviceNetworkProblem), errors
    assert str(errors["p0"]).startswith("link failed (RuntimeError: link failed), and d0's device IP 192.168.1.2 "
                                        "does not answer hccn_tool -i 0 -ping (0 of 3 replies)")
    assert isinstance(errors["p0"].__cause__, RuntimeError)
    assert classify(errors["p0"]) == "environment"
    # d0's pings answer and TLS agrees: d0's own view finds nothing, its failure stays llm_datadist's
    assert type(errors["d0"]) is RuntimeError and classify(errors["d0"]) == "product"


def test_a_failed_link_on_a_healthy_network_stays_the_products(fake_dev, fake_hccn, failing_link, store):
    fake_hccn.install()
    errors = _link_both(store)
    assert {type(e) for e in errors.values()} == {RuntimeError}, errors
    assert all(classify(e) == "product" for e in errors.values())

