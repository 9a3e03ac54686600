"""After a two-sided ``link`` failed on npu: is the device network to blame?

llm_datadist's status alone (``link failed``, ``LLM_LINK_FAILED``, a timeout) does not say whether the
product or the network broke. Two things kvtest can check itself tell the environment's failures
apart, as ``kvtest doctor`` does before a run: the peer's device IP answers ``hccn_tool -ping`` from
this device, and both devices have the same TLS switch (devices with different TLS settings cannot
link). Only a check that ran and found a problem blames the environment; a check that could not run
leaves the failure the product's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvtest.host import devices
from kvtest.host.problems import EnvironmentProblem

__all__ = ["DeviceNetworkProblem", "LinkPeer", "explain_link_failure"]


class DeviceNetworkProblem(EnvironmentProblem):
    """The device network cannot carry the link; the message says what was found and the fix."""


@dataclass(frozen=True)
class LinkPeer:
    """Another member of the failed link, as its rank table entry names it (physical device id)."""

    role: str
    host_ip: str
    device_id: int
    device_ip: str


def _switch(on: bool) -> str:
    return "on" if on else "off"


def explain_link_failure(
    own_device: int, own_host_ip: str, peers: Sequence[LinkPeer], timeout: float = 10.0
) -> DeviceNetworkProblem | None:
    """What is wrong with the device network between *physical* device ``own_device`` and ``peers``.

    Pings every peer's device IP from ``own_device``; for a peer on this host (same host IP) also
    compares the two devices' TLS switches (a peer on another host reads its own: ``kvtest doctor
    --peer`` compares them across hosts). None when every check that could run passed.
    """
    found: list[str] = []
    for peer in peers:
        try:
            result = devices.ping(own_device, peer.device_ip, timeout=timeout)
        except devices.DeviceError:
            result = None  # the check could not run: no verdict from it
        if result is not None and not result.ok:
            found.append(
                f"{peer.role}'s device IP {peer.device_ip} does not answer hccn_tool -i {own_device} -ping "
                f"({result.received} of {result.sent} replies): check cabling, netmask and gateway "
                f"(hccn_tool -i {own_device} -ip -g / -link -g / -gateway -g)"
            )
        if peer.host_ip != own_host_ip or peer.device_id == own_device:
            continue
        try:
            mine = devices.tls_enabled(own_device, timeout=timeout)
            theirs = devices.tls_enabled(peer.device_id, timeout=timeout)
        except devices.DeviceError:
            continue
        if mine != theirs:
            found.append(
                f"TLS is {_switch(mine)} on npu {own_device} but {_switch(theirs)} on {peer.role}'s npu "
                f"{peer.device_id}: devices with different TLS settings cannot link; make it the same, "
                "e.g. hccn_tool -i N -tls -s enable 0 on every device"
            )
    return DeviceNetworkProblem("; ".join(found)) if found else None
