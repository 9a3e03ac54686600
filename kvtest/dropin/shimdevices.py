"""The shim devices' ids (standard library only: the fake hccn_tool must not import torch).

``KVTEST_SHIM_DEVICES`` lists the *physical* ids the host has (default ``0..7``);
``ASCEND_RT_VISIBLE_DEVICES`` picks and renumbers them into *logical* ids, as the driver does.
"""

from __future__ import annotations

import os

DEVICES_VAR = "KVTEST_SHIM_DEVICES"
DEFAULT_DEVICES = tuple(range(8))


def physical_devices(env: dict[str, str] | os._Environ[str] | None = None) -> list[int]:
    """The physical ids of the host's (shim) NPUs: ``KVTEST_SHIM_DEVICES`` or 0..7."""
    env = os.environ if env is None else env
    text = env.get(DEVICES_VAR, "").strip()
    if not text:
        return list(DEFAULT_DEVICES)
    return sorted({int(p) for p in text.replace(";", ",").split(",") if p.strip()})


def logical_devices(env: dict[str, str] | os._Environ[str] | None = None) -> list[int]:
    """Physical ids in logical order: ``ASCEND_RT_VISIBLE_DEVICES`` when set, as the driver applies it."""
    env = os.environ if env is None else env
    physical = physical_devices(env)
    visible = env.get("ASCEND_RT_VISIBLE_DEVICES", "").strip()
    if not visible:
        return physical
    chosen = []
    for part in visible.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) not in physical:
            break  # the driver stops at the first id it cannot use
        chosen.append(int(part))
    return chosen
