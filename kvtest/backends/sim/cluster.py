"""``LLMClusterInfo``: who ``link_clusters`` / ``unlink_clusters`` talk to, and over which ip:port
(attributes, defaults and checks as hicann/hixl src/python/llm_datadist/llm_datadist/configs.py)."""

from __future__ import annotations

import socket
import struct

from kvtest.backends.sim.checks import check_isinstance, check_uint16, check_uint64
from kvtest.backends.sim.config import LLMRole, ip_to_int


def int_to_ip(value: int) -> str:
    return socket.inet_ntoa(struct.pack("<I", value))


class LLMClusterInfo:
    """A remote cluster id plus local and remote ``(ip, port)`` entries (ips kept as ints)."""

    def __init__(self) -> None:
        self._remote_cluster_id: int | None = None
        self._remote_role_type: LLMRole | int | None = None
        self._local_ip_info_list: list[tuple[int, int]] = []
        self._remote_ip_info_list: list[tuple[int, int]] = []

    @staticmethod
    def _check_inputs(ip: str | int, port: int) -> int:
        check_isinstance("ip", ip, [str, int])
        check_uint16("port", port)
        return ip_to_int(ip)

    @property
    def remote_cluster_id(self) -> int | None:
        return self._remote_cluster_id

    @remote_cluster_id.setter
    def remote_cluster_id(self, value: int) -> None:
        check_uint64("remote_cluster_id", value)
        self._remote_cluster_id = value

    @property
    def remote_role_type(self) -> LLMRole | int | None:
        return self._remote_role_type

    @remote_role_type.setter
    def remote_role_type(self, value: LLMRole | int) -> None:
        check_isinstance("remote_role_type", value, [LLMRole, int])
        self._remote_role_type = value

    @property
    def local_ip_info_list(self) -> list[tuple[int, int]]:
        return self._local_ip_info_list

    @property
    def remote_ip_info_list(self) -> list[tuple[int, int]]:
        return self._remote_ip_info_list

    def append_local_ip_info(self, ip: str | int, port: int) -> None:
        self._local_ip_info_list.append((self._check_inputs(ip, port), port))

    def append_remote_ip_info(self, ip: str | int, port: int) -> None:
        self._remote_ip_info_list.append((self._check_inputs(ip, port), port))
