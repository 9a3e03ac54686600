"""Environment checks the samples depend on, each a small :class:`Check` record.

These read the environment only (no device calls), so they are cheap enough for a session header
as well as for ``kvtest doctor``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from kvtest.host.devices import DeviceError, parse_visible_devices, physical_id

__all__ = [
    "FAIL",
    "OK",
    "SKIP",
    "WARN",
    "Check",
    "check_bytecode_cache",
    "check_gloo_ifname",
    "check_intra_roce",
    "check_visible_devices",
    "env_checks",
    "interface_names",
]

OK = "ok"
WARN = "warn"
FAIL = "fail"
SKIP = "skip"


@dataclass(frozen=True)
class Check:
    """One preflight verdict: ``status`` is ok, warn, fail or skip; ``fix`` says what to do."""

    name: str
    status: str
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def interface_names() -> list[str]:
    """This host's network interface names."""
    try:
        return [name for _, name in socket.if_nameindex()]
    except OSError:
        return []


def check_gloo_ifname(env: Mapping[str, str] | None = None, interfaces: list[str] | None = None) -> Check:
    """``GLOO_SOCKET_IFNAME`` must name interfaces of this host (gloo barriers bind to it)."""
    env = os.environ if env is None else env
    names = interface_names() if interfaces is None else interfaces
    value = env.get("GLOO_SOCKET_IFNAME", "").strip()
    hint = "export GLOO_SOCKET_IFNAME=<nic that reaches the peer host>"
    if not value:
        return Check(
            "GLOO_SOCKET_IFNAME",
            WARN,
            "unset: gloo picks an interface from the host name, which may not reach the peer",
            f"{hint} (this host has: {', '.join(names) or 'none'})",
        )
    wanted = [part.strip() for part in value.split(",") if part.strip()]
    missing = [name for name in wanted if name not in names]
    if missing:
        return Check(
            "GLOO_SOCKET_IFNAME",
            FAIL,
            f"{value}: no interface named {', '.join(missing)} on this host",
            f"{hint}; this host has: {', '.join(names) or 'none'}",
        )
    return Check("GLOO_SOCKET_IFNAME", OK, value)


def check_intra_roce(single_host: bool | None, env: Mapping[str, str] | None = None) -> Check:
    """``HCCL_INTRA_ROCE_ENABLE=1`` is what the samples set for a two-sided link on one host.

    :param single_host: True when both sides run on this host, None when not known yet.
    """
    env = os.environ if env is None else env
    value = env.get("HCCL_INTRA_ROCE_ENABLE", "")
    shown = value if value else "unset"
    if value == "1":
        return Check("HCCL_INTRA_ROCE_ENABLE", OK, "1")
    if single_host is False:
        return Check("HCCL_INTRA_ROCE_ENABLE", OK, f"{shown} (only single-host links need 1)")
    where = "both sides run on this host" if single_host else "if both sides run on one host"
    return Check(
        "HCCL_INTRA_ROCE_ENABLE",
        WARN,
        f"{shown}: {where}, the samples' two-sided link goes over RoCE only with 1",
        "export HCCL_INTRA_ROCE_ENABLE=1",
    )


def check_visible_devices(device_id: int | None, env: Mapping[str, str] | None = None) -> Check:
    """``ASCEND_RT_VISIBLE_DEVICES`` must be well formed and expose the requested (logical) ``device_id``."""
    env = os.environ if env is None else env
    value = env.get("ASCEND_RT_VISIBLE_DEVICES", "").strip()
    name = "ASCEND_RT_VISIBLE_DEVICES"
    if not value:
        return Check(name, OK, "unset: every device visible, logical id n = the n-th /dev/davinciN")
    try:
        ids = parse_visible_devices(value)
    except DeviceError as exc:
        return Check(name, FAIL, str(exc), "export ASCEND_RT_VISIBLE_DEVICES=0,1 (ids, commas) or unset it")
    if device_id is None:
        return Check(name, OK, f"{value}: logical ids 0..{len(ids) - 1}")
    if not 0 <= device_id < len(ids):
        return Check(
            name,
            FAIL,
            f"{value} exposes logical ids 0..{len(ids) - 1}, device {device_id} is not among them",
            f"use --device-id 0..{len(ids) - 1}, or add the device to ASCEND_RT_VISIBLE_DEVICES",
        )
    try:
        physical = physical_id(device_id, env)
    except DeviceError as exc:
        return Check(name, FAIL, str(exc), "list devices this host has, or unset ASCEND_RT_VISIBLE_DEVICES")
    return Check(name, OK, f"{value}: logical device {device_id} is physical device {physical}")


def check_bytecode_cache(env: Mapping[str, str] | None = None) -> Check:
    """PYTHONDONTWRITEBYTECODE (many container images set it) keeps Python from caching compiled modules,
    pytest's assertion-rewritten ones included: every role process then parses and rewrites kvtest, the
    tests and the packages of the pytest plugins installed (hypothesis' alone: 2 s a process at the
    terminal summary here). The smoke profile on the project's 2-core VM: 14.7-17.3 s with it set and
    no caches, 13.6-13.8 s unset (3 runs each)."""
    env = os.environ if env is None else env
    name = "PYTHONDONTWRITEBYTECODE"
    value = env.get(name, "")
    if not value:
        return Check(name, OK, "unset: compiled modules are cached between runs")
    return Check(
        name,
        WARN,
        f"{value!r}: every kvtest process compiles its modules and rewrites the tests' asserts again "
        "(seconds a role process)",
        "unset PYTHONDONTWRITEBYTECODE for kvtest runs",
    )


def env_checks(
    device_id: int | None = None, single_host: bool | None = None, env: Mapping[str, str] | None = None
) -> list[Check]:
    """Every environment check, in display order."""
    return [
        check_gloo_ifname(env),
        check_intra_roce(single_host, env),
        check_visible_devices(device_id, env),
        check_bytecode_cache(env),
    ]
