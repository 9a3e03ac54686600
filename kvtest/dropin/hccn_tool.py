"""A fake ``hccn_tool`` for ``kvtest run`` on sim: every shim device has a loopback device IP.

Answers the queries the vendor samples and kvtest make, in the real tool's output format:
``-i N -ip -g`` (``ipaddr:``/``netmask:``), ``-i N -ping -g address IP`` (loopback addresses answer),
``-i N -tls -g`` (``tls switch[0]``). Device ids are *physical* (``KVTEST_SHIM_DEVICES``), as the real
tool's are; ``ASCEND_RT_VISIBLE_DEVICES`` does not renumber them.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence

from kvtest.dropin.shimdevices import physical_devices


def device_ip(physical_id: int) -> str:
    """Device N's IP: 127.0.100.(N+1), one loopback address per device."""
    return f"127.0.100.{physical_id + 1}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] != "-i" or not args[1].isdigit():
        print("Usage: hccn_tool -i <device_id> -ip -g | -ping -g address <ip> | -tls -g (kvtest shim)")
        return 1
    device = int(args[1])
    if device not in physical_devices():
        print(f"Device id {device} is invalid (kvtest shim devices: {physical_devices()})")
        return 1
    query = args[2:]
    if query == ["-ip", "-g"]:
        print(f"ipaddr:{device_ip(device)}")
        print("netmask:255.255.255.0")
        return 0
    if query == ["-tls", "-g"]:
        print(
            f"dev_id:{device}, tls switch[0](0:disable, 1:enable), tls preconfigured[1], "
            "tls alarm time threshold[60]days"
        )
        return 0
    if len(query) == 4 and query[:3] == ["-ping", "-g", "address"]:
        try:
            reachable = ipaddress.ip_address(query[3]).is_loopback
        except ValueError:
            print(f"Invalid address {query[3]}")
            return 1
        received = 3 if reachable else 0
        for seq in range(received):
            print(f"recv seq={seq},time=0.05ms")
        print(f"3 packets transmitted, {received} received, {100 - received * 100 // 3}% packet loss")
        return 0 if reachable else 1
    print(f"hccn_tool (kvtest shim) does not emulate: {' '.join(args)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
