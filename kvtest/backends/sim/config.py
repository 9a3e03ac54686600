"""``LLMRole`` and the ``LLMConfig`` option builder (also exported as ``LlmConfig``)."""

from __future__ import annotations

import json
from enum import IntEnum

from kvtest.backends.sim.checks import INT32_MAX, UINT32_MAX, check_int, check_type
from kvtest.backends.sim.status import raise_param_invalid


class LLMRole(IntEnum):
    PROMPT = 1
    DECODER = 2
    MIX = 3


ROLE_OPTION = {LLMRole.PROMPT: "Prompt", LLMRole.DECODER: "Decoder", LLMRole.MIX: "Mix"}


def parse_listen_ip_info(text: str) -> tuple[str, int]:
    """Split ``"ip:port"``; PARAM_INVALID when it is not that shape."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise_param_invalid(f"listen_ip_info should be in format ip:port, but got {text!r}.")
    return host, int(port)


class LlmConfig:
    """Set properties, then ``generate_options()``; the same dict accumulates across calls."""

    def __init__(self) -> None:
        self._options: dict[str, str] = {}
        self._device_id: int | list[int] | None = None
        self._sync_kv_timeout: int | None = None
        self._listen_ip_info: str | None = None
        self._enable_cache_manager: bool | None = None
        self._enable_remote_cache_accessible: bool | None = None
        self._mem_pool_cfg: str | None = None
        self._host_mem_pool_cfg: str | None = None
        self._local_comm_res: str | None = None
        self._transfer_backend: str | None = None
        self._link_total_time: int | None = None
        self._link_retry_count: int | None = None
        self._ge_options: dict[str, str] = {}
        self._mem_utilization = 0.95

    @property
    def device_id(self) -> int | list[int] | None:
        return self._device_id

    @device_id.setter
    def device_id(self, value: int | list[int]) -> None:
        if isinstance(value, (list, tuple)):
            for v in value:
                check_int("device_id", v, 0, INT32_MAX)
            self._device_id = [int(v) for v in value]
        else:
            self._device_id = check_int("device_id", value, 0, INT32_MAX)

    @property
    def sync_kv_timeout(self) -> int | None:
        return self._sync_kv_timeout

    @sync_kv_timeout.setter
    def sync_kv_timeout(self, value: int | str) -> None:
        check_type("sync_kv_timeout", value, int, str)
        if isinstance(value, str):
            if not value.isdigit():
                raise ValueError(f"sync_kv_timeout's value is out of range, digit str, but got {value!r}")
            value = int(value)
        self._sync_kv_timeout = check_int("sync_kv_timeout", value, 1, INT32_MAX)

    @property
    def listen_ip_info(self) -> str | None:
        return self._listen_ip_info

    @listen_ip_info.setter
    def listen_ip_info(self, value: str) -> None:
        check_type("listen_ip_info", value, str)
        parse_listen_ip_info(value)
        self._listen_ip_info = value

    @property
    def enable_cache_manager(self) -> bool | None:
        return self._enable_cache_manager

    @enable_cache_manager.setter
    def enable_cache_manager(self, value: bool) -> None:
        check_type("enable_cache_manager", value, bool)
        self._enable_cache_manager = value

    @property
    def enable_remote_cache_accessible(self) -> bool | None:
        return self._enable_remote_cache_accessible

    @enable_remote_cache_accessible.setter
    def enable_remote_cache_accessible(self, value: bool) -> None:
        check_type("enable_remote_cache_accessible", value, bool)
        self._enable_remote_cache_accessible = value

    @property
    def mem_pool_cfg(self) -> str | None:
        return self._mem_pool_cfg

    @mem_pool_cfg.setter
    def mem_pool_cfg(self, value: str) -> None:
        check_type("mem_pool_cfg", value, str)
        self._mem_pool_cfg = value

    @property
    def host_mem_pool_cfg(self) -> str | None:
        return self._host_mem_pool_cfg

    @host_mem_pool_cfg.setter
    def host_mem_pool_cfg(self, value: str) -> None:
        check_type("host_mem_pool_cfg", value, str)
        self._host_mem_pool_cfg = value

    @property
    def local_comm_res(self) -> str | None:
        return self._local_comm_res

    @local_comm_res.setter
    def local_comm_res(self, value: str) -> None:
        check_type("local_comm_res", value, str)
        self._local_comm_res = value

    @property
    def transfer_backend(self) -> str | None:
        return self._transfer_backend

    @transfer_backend.setter
    def transfer_backend(self, value: str) -> None:
        check_type("transfer_backend", value, str)
        self._transfer_backend = value

    @property
    def link_total_time(self) -> int | None:
        return self._link_total_time

    @link_total_time.setter
    def link_total_time(self, value: int) -> None:
        self._link_total_time = check_int("link_total_time", value, 0, UINT32_MAX)

    @property
    def link_retry_count(self) -> int | None:
        return self._link_retry_count

    @link_retry_count.setter
    def link_retry_count(self, value: int) -> None:
        self._link_retry_count = check_int("link_retry_count", value, 1, 100)

    @property
    def ge_options(self) -> dict[str, str]:
        return self._ge_options

    @ge_options.setter
    def ge_options(self, value: dict[str, str]) -> None:
        check_type("ge_options", value, dict)
        for k, v in value.items():
            check_type("ge_options key", k, str)
            check_type("ge_options value", v, str)
        self._ge_options = dict(value)

    @property
    def mem_utilization(self) -> float:
        return self._mem_utilization

    @mem_utilization.setter
    def mem_utilization(self, value: float) -> None:
        check_type("mem_utilization", value, float, int)
        if not 0 < value <= 1:
            raise ValueError(f"mem_utilization's value is out of range, (0, 1], but got {value}")
        self._mem_utilization = float(value)

    def generate_options(self) -> dict[str, str]:
        """The option dict ``LLMDataDist.init`` takes (the same object on every call)."""
        opts = self._options
        if self._device_id is not None:
            ids = self._device_id if isinstance(self._device_id, list) else [self._device_id]
            opts["ge.exec.deviceId"] = ";".join(str(i) for i in ids)
            opts["ge.session_device_id"] = str(ids[0])
        if self._sync_kv_timeout is not None:
            opts["llm.SyncKvCacheWaitTime"] = str(self._sync_kv_timeout)
        if self._listen_ip_info is not None:
            opts["llm.listenIpInfo"] = self._listen_ip_info
        if self._local_comm_res is not None:
            opts["llm.LocalCommRes"] = self._local_comm_res
        cm = self._enable_cache_manager
        remote = self._enable_remote_cache_accessible
        if self._local_comm_res is not None:
            cm = True if cm is None else cm
            remote = True if remote is None else remote
        if cm is not None:
            opts["llm.EnableCacheManager"] = "1" if cm else "0"
        if remote is not None:
            opts["llm.EnableRemoteCacheAccessible"] = "1" if remote else "0"
        if self._mem_pool_cfg is not None:
            opts["llm.MemPoolConfig"] = self._mem_pool_cfg
        if self._host_mem_pool_cfg is not None:
            opts["llm.HostMemPoolConfig"] = self._host_mem_pool_cfg
        if self._transfer_backend is not None:
            opts["llm.TransferBackend"] = self._transfer_backend
        if self._link_total_time is not None:
            opts["llm.LinkTotalTime"] = str(self._link_total_time)
        if self._link_retry_count is not None:
            opts["llm.LinkRetryCount"] = str(self._link_retry_count)
        opts.update(self._ge_options)
        opts["llm.MemoryUtilization"] = str(self._mem_utilization)
        return opts

    gen_options = generate_options


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
