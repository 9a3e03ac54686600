"""``LLMRole`` and the ``LLMConfig`` option builder (also exported as ``LlmConfig``)."""

from __future__ import annotations

import json
import socket
from enum import IntEnum

from kvtest.backends.sim.checks import (
    UINT16_MAX,
    UINT32_MAX,
    check_dict,
    check_int32,
    check_isinstance,
    check_uint32,
)
from kvtest.backends.sim.status import raise_if_false, raise_param_invalid


class LLMRole(IntEnum):
    PROMPT = 1
    DECODER = 2
    MIX = 3

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


ROLE_OPTION = {LLMRole.PROMPT: "Prompt", LLMRole.DECODER: "Decoder", LLMRole.MIX: "Mix"}


def parse_listen_ip_info(text: str) -> tuple[str, int]:
    """Split ``"ip:port"`` as the real ``parse_listen_ip_info`` does (hicann/hixl v2/llm_utils.py):
    PARAM_INVALID unless there is exactly one colon, ValueError for a port that is not an int. The
    sim also refuses a port outside 1..65535, which the real one leaves to its listener."""
    check_isinstance("listen_ip_info", text, [str])
    parts = text.split(":")
    if len(parts) != 2:
        raise_param_invalid(f'llm.listenIpInfo "{text}" is invalid, format should be "ip:port"')
    port = int(parts[1])
    if not 0 < port <= UINT16_MAX:
        raise_param_invalid(f'llm.listenIpInfo "{text}" is invalid, port should be in [1, 65535]')
    return parts[0], port


def ip_to_int(ip: str | int) -> int:
    """A dotted IPv4 string as the real package stores it (little-endian ``inet_aton``); an int as is."""
    if isinstance(ip, str):
        try:
            return int.from_bytes(socket.inet_aton(ip), byteorder="little")
        except OSError:
            raise RuntimeError(f"Can not parse ip str:{ip}") from None
    return ip


class LlmConfig:
    """Set properties, then ``generate_options()``: the same dict accumulates across calls. Getters,
    setters, checks and option keys as hicann/hixl src/python/llm_datadist/llm_datadist/configs.py."""

    def __init__(self) -> None:
        self._options: dict[str, str] = {}
        self._listen_ip_info = ""
        self._device_id: int | list[int] | tuple[int, ...] | None = None
        self._sync_kv_timeout: int | str | None = None
        self._deploy_res_path = ""
        self._ge_options: dict[str, str] = {}
        self._enable_switch_role = False
        self._link_total_time: int | None = None
        self._link_retry_count: int | None = None
        self._cluster_info = ""
        self._output_max_size: int | None = None
        self._mem_utilization = 0.95
        self._buf_pool_cfg = ""
        self._mem_pool_cfg = ""
        self._host_mem_pool_cfg = ""
        self._enable_cache_manager: bool | None = None
        self._enable_remote_cache_accessible: bool | None = None
        self._rdma_traffic_class: int | None = None
        self._rdma_service_level: int | None = None
        self._local_comm_res: str | None = None
        self._transfer_backend: str | None = None
        self._global_resource_config: str | None = None

    def generate_options(self) -> dict[str, str]:
        """The option dict ``LLMDataDist.init`` takes (the same object on every call). ``ge_options``
        go in first, so a property set on the config wins over the same key in ``ge_options``."""
        return self.gen_options()

    def gen_options(self) -> dict[str, str]:
        opts = self._options
        if self._ge_options:
            opts.update(self._ge_options)
        if self._device_id is not None:
            if isinstance(self._device_id, int):
                opts["ge.exec.deviceId"] = str(self._device_id)
                opts["ge.session_device_id"] = str(self._device_id)
            else:
                opts["ge.session_device_id"] = str(self._device_id[0])
                opts["ge.exec.deviceId"] = ";".join(str(d) for d in self._device_id)
        if self._sync_kv_timeout is not None:
            opts["llm.SyncKvCacheWaitTime"] = str(self._sync_kv_timeout)
        if self._deploy_res_path:
            opts["llm.deployResPath"] = self._deploy_res_path
        if self._buf_pool_cfg:
            opts["llm.BufPoolCfg"] = self._buf_pool_cfg
        if self._mem_pool_cfg:
            opts["llm.MemPoolConfig"] = self._mem_pool_cfg
        if self._host_mem_pool_cfg:
            opts["llm.HostMemPoolConfig"] = self._host_mem_pool_cfg
        if self._enable_cache_manager is not None:
            opts["llm.EnableCacheManager"] = "1" if self._enable_cache_manager else "0"
        if self._enable_remote_cache_accessible is not None:
            opts["llm.EnableRemoteCacheAccessible"] = "1" if self._enable_remote_cache_accessible else "0"
        if self._listen_ip_info:
            opts["llm.listenIpInfo"] = self._listen_ip_info
        if self._link_total_time is not None:
            opts["llm.LinkTotalTime"] = str(self._link_total_time)
        if self._link_retry_count is not None:
            opts["llm.LinkRetryCount"] = str(self._link_retry_count)
        if self._rdma_traffic_class is not None:
            opts["llm.RdmaTrafficClass"] = str(self._rdma_traffic_class)
        if self._rdma_service_level is not None:
            opts["llm.RdmaServiceLevel"] = str(self._rdma_service_level)
        if self._local_comm_res is not None:
            opts["llm.LocalCommRes"] = self._local_comm_res
        if self._transfer_backend is not None:
            opts["llm.TransferBackend"] = self._transfer_backend
        if self._global_resource_config is not None:
            opts["llm.GlobalResourceConfig"] = self._global_resource_config
        if self._cluster_info:
            opts["llm.ClusterInfo"] = self._cluster_info
        if self._output_max_size is not None:
            opts["llm.OutputMaxSize"] = str(self._output_max_size)
        if self._enable_switch_role:
            opts["llm.EnableSwitchRole"] = "1"
        if self._mem_utilization is not None:
            opts["llm.MemoryUtilization"] = str(self._mem_utilization)
        return opts

    @property
    def options(self) -> dict[str, str]:
        return self._options

    @property
    def ge_options(self) -> dict[str, str]:
        return self._ge_options

    @ge_options.setter
    def ge_options(self, value: dict[str, str]) -> None:
        check_isinstance("ge_options", value, dict)
        check_dict("ge_options", value, str, str)
        self._ge_options = value

    @property
    def device_id(self) -> int | list[int] | tuple[int, ...] | None:
        return self._device_id

    @device_id.setter
    def device_id(self, value: int | list[int] | tuple[int, ...]) -> None:
        check_isinstance("device_id", value, [list, tuple, int])
        if isinstance(value, (list, tuple)):
            check_isinstance("device_id", value, [list, tuple], int)
            for dev in value:
                raise_if_false(dev >= 0, "device_id should be greater than or equal to zero.")
            for dev in value:
                check_int32("device_id", dev)
        else:
            check_isinstance("device_id", value, int)
            if value is not None:
                raise_if_false(value >= 0, "device_id should be greater than or equal to zero.")
            check_int32("device_id", value)
        self._device_id = value

    @property
    def listen_ip_info(self) -> str:
        return self._listen_ip_info

    @listen_ip_info.setter
    def listen_ip_info(self, value: str) -> None:
        check_isinstance("listen_ip_info", value, str)
        self._listen_ip_info = value

    @property
    def deploy_res_path(self) -> str:
        return self._deploy_res_path

    @deploy_res_path.setter
    def deploy_res_path(self, value: str) -> None:
        check_isinstance("deploy_res_path", value, str)
        self._deploy_res_path = value

    @property
    def buf_pool_cfg(self) -> str:
        return self._buf_pool_cfg

    @buf_pool_cfg.setter
    def buf_pool_cfg(self, value: str) -> None:
        check_isinstance("buf_pool_cfg", value, str)
        self._buf_pool_cfg = value

    @property
    def output_max_size(self) -> int | None:
        return self._output_max_size

    @output_max_size.setter
    def output_max_size(self, value: int) -> None:
        check_isinstance("output_max_size", value, int)
        self._output_max_size = value

    @property
    def mem_utilization(self) -> float:
        return self._mem_utilization

    @mem_utilization.setter
    def mem_utilization(self, value: float) -> None:
        check_isinstance("mem_utilization", value, float)
        raise_if_false(0.0 <= value <= 1.0, f"mem_utilization must be in range [0,1], current:{value}")
        self._mem_utilization = value

    @property
    def cluster_info(self) -> str:
        return self._cluster_info

    @cluster_info.setter
    def cluster_info(self, value: str) -> None:
        check_isinstance("cluster_info", value, str)
        parsed = json.loads(value)
        for ip_info in parsed.get("listen_ip_info", ()):
            ip_info["ip"] = ip_to_int(ip_info["ip"])
        self._cluster_info = json.dumps(parsed)

    @property
    def sync_kv_timeout(self) -> int | str | None:
        return self._sync_kv_timeout

    @sync_kv_timeout.setter
    def sync_kv_timeout(self, value: int | str) -> None:
        check_isinstance("sync_kv_timeout", value, [int, str])
        if isinstance(value, str):
            raise_if_false(value.isdigit(), "sync_kv_timeout must be digit.")
        raise_if_false(int(value) > 0, "sync_kv_timeout should be greater than zero.")
        check_int32("sync_kv_timeout", int(value))
        self._sync_kv_timeout = value

    @property
    def enable_switch_role(self) -> bool:
        return self._enable_switch_role

    @enable_switch_role.setter
    def enable_switch_role(self, value: bool) -> None:
        check_isinstance("enable_switch_role", value, [bool])
        self._enable_switch_role = value

    @property
    def link_total_time(self) -> int:
        return 0 if self._link_total_time is None else self._link_total_time

    @link_total_time.setter
    def link_total_time(self, value: int) -> None:
        check_isinstance("link_total_time", value, int)
        raise_if_false(
            0 <= value <= UINT32_MAX,
            f"link_total_time should be an integer between [0, 2^32-1], given value is {value}",
        )
        self._link_total_time = value

    @property
    def link_retry_count(self) -> int:
        return 1 if self._link_retry_count is None else self._link_retry_count

    @link_retry_count.setter
    def link_retry_count(self, value: int) -> None:
        check_isinstance("link_retry_count", value, int)
        raise_if_false(
            1 <= value <= 100,
            f"link_retry_count should be an integer between [1, 100], given value is {value}",
        )
        self._link_retry_count = value

    @property
    def enable_cache_manager(self) -> bool:
        return bool(self._enable_cache_manager)

    @enable_cache_manager.setter
    def enable_cache_manager(self, value: bool) -> None:
        check_isinstance("enable_cache_manager", value, [bool])
        self._enable_cache_manager = value

    @property
    def enable_remote_cache_accessible(self) -> bool:
        return bool(self._enable_remote_cache_accessible)

    @enable_remote_cache_accessible.setter
    def enable_remote_cache_accessible(self, value: bool) -> None:
        check_isinstance("enable_remote_cache_accessible", value, [bool])
        self._enable_remote_cache_accessible = value

    @property
    def mem_pool_cfg(self) -> str:
        return self._mem_pool_cfg

    @mem_pool_cfg.setter
    def mem_pool_cfg(self, value: str) -> None:
        check_isinstance("mem_pool_cfg", value, str)
        self._mem_pool_cfg = value

    @property
    def host_mem_pool_cfg(self) -> str:
        return self._host_mem_pool_cfg

    @host_mem_pool_cfg.setter
    def host_mem_pool_cfg(self, value: str) -> None:
        check_isinstance("host_mem_pool_cfg", value, str)
        self._host_mem_pool_cfg = value

    @property
    def rdma_traffic_class(self) -> int | None:
        return self._rdma_traffic_class

    @rdma_traffic_class.setter
    def rdma_traffic_class(self, value: int) -> None:
        check_uint32("rdma_traffic_class", value)
        self._rdma_traffic_class = value

    @property
    def rdma_service_level(self) -> int | None:
        return self._rdma_service_level

    @rdma_service_level.setter
    def rdma_service_level(self, value: int) -> None:
        check_uint32("rdma_service_level", value)
        self._rdma_service_level = value

    @property
    def local_comm_res(self) -> str:
        return "" if self._local_comm_res is None else self._local_comm_res

    @local_comm_res.setter
    def local_comm_res(self, value: str) -> None:
        check_isinstance("local_comm_res", value, str)
        self._local_comm_res = value

    @property
    def transfer_backend(self) -> str:
        return "" if self._transfer_backend is None else self._transfer_backend

    @transfer_backend.setter
    def transfer_backend(self, value: str) -> None:
        check_isinstance("transfer_backend", value, str)
        self._transfer_backend = value

    @property
    def global_resource_config(self) -> str:
        return "" if self._global_resource_config is None else self._global_resource_config

    @global_resource_config.setter
    def global_resource_config(self, value: str) -> None:
        check_isinstance("global_resource_config", value, str)
        self._global_resource_config = value


LLMConfig = LlmConfig


def pool_size(option: str, text: str) -> int:
    """``memory_size`` from a pool config JSON (``{"memory_size": N}``); PARAM_INVALID otherwise."""
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError:
        raise_param_invalid(f"{option} should be a json str, but got {text!r}.")
    size = cfg.get("memory_size") if isinstance(cfg, dict) else None
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise_param_invalid(f"{option} should contain a positive int memory_size, but got {text!r}.")
    return size
