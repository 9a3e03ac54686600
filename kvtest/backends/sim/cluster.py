"""``LLMClusterInfo``: who ``link_clusters`` / ``unlink_clusters`` talk to, and over which ip:port."""

from __future__ import annotations

import socket
import struct

from kvtest.backends.sim.checks import UINT16_MAX, UINT32_MAX, UINT64_MAX, check_int, check_type


def ip_to_int(ip: str | int) -> int:
    """A dotted IPv4 string as the real package stores it (little-endian ``inet_aton``), or an int as is."""
    check_type("ip", ip, str, int)
    if isinstance(ip, int):
        return check_int("ip", ip, 0, UINT32_MAX)
    try:
        packed = socket.inet_aton(ip)
    except OSError:
        raise ValueError(f"ip's value is out of range, IPv4 dotted string, but got {ip!r}") from None
    return int(struct.unpack("<I", packed)[0])


def int_to_ip(value: int) -> str:
    return socket.inet_ntoa(struct.pack("<I", value))


class LLMClusterInfo:
    """A remote cluster id plus local and remote ``(ip, port)`` entries (ips kept as ints)."""

    def __init__(self) -> None:
        self._remote_cluster_id = 0
        self._remote_role_type = 0
        self._local_ip_info: list[tuple[int, int]] = []
        self._remote_ip_info: list[tuple[int, int]] = []

    @property
    def remote_cluster_id(self) -> int:
        return self._remote_cluster_id

    @remote_cluster_id.setter
    def remote_cluster_id(self, value: int) -> None:
        self._remote_cluster_id = check_int("remote_cluster_id", value, 0, UINT64_MAX)

    @property
    def remote_role_type(self) -> int:
        return self._remote_role_type

    @remote_role_type.setter
    def remote_role_type(self, value: int) -> None:
        self._remote_role_type = check_int("remote_role_type", int(value), 0, UINT32_MAX)

    def append_local_ip_info(self, ip: str | int, port: int) -> None:
        self._local_ip_info.append((ip_to_int(ip), check_int("port", port, 0, UINT16_MAX)))

    def append_remote_ip_info(self, ip: str | int, port: int) -> None:
        self._remote_ip_info.append((ip_to_int(ip), check_int("port", port, 0, UINT16_MAX)))

    @property
    def local_ip_info_list(self) -> list[tuple[int, int]]:
        return list(self._local_ip_info)

    @property
    def remote_ip_info_list(self) -> list[tuple[int, int]]:
        return list(self._remote_ip_info)

    def __repr__(self) -> str:
        remote = [f"{int_to_ip(ip)}:{port}" for ip, port in self._remote_ip_info]
        return f"LLMClusterInfo(remote_cluster_id={self._remote_cluster_id}, remote={remote})"
