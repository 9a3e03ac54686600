"""What the plugin, the session and the fixtures share in one pytest process: stash keys and lookups.

The plugin writes the resolved settings here at configure time; everything else reads them through
:func:`settings_of`. Nothing in kvtest imports :mod:`kvtest.plugin`: this module is where shared
lookups live (the chosen backend, the ``kv`` marker's settings, the devices this process claimed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from kvtest.backends.protocol import Backend, BackendUnavailable
from kvtest.roles.topology import parse_topology
from kvtest.settings import Settings, parse_timeout

__all__ = [
    "BODY_FAILED",
    "MARKER_KEYS",
    "SETTINGS",
    "Devices",
    "chosen_backend",
    "devices_of",
    "marker_settings",
    "settings_of",
]

SETTINGS = pytest.StashKey[Settings]()
#: the backend this process loaded and why it was chosen (one line for the header)
BACKEND = pytest.StashKey[tuple[Backend, str]]()
#: set on an item whose body failed, so teardown problems do not hide the body's failure
BODY_FAILED = pytest.StashKey[bool]()
MARKER_KEYS = frozenset({"topology", "timeout"})


@dataclass
class Devices:
    """The device each role of this process uses, and the pool claims held for the whole session."""

    by_role: dict[str, int] = field(default_factory=dict)
    claims: list[Any] = field(default_factory=list)


_DEVICES = pytest.StashKey[Devices]()


def settings_of(config: pytest.Config) -> Settings:
    return config.stash[SETTINGS]


def devices_of(config: pytest.Config) -> Devices:
    return config.stash.setdefault(_DEVICES, Devices())


def chosen_backend(config: pytest.Config) -> tuple[Backend, str]:
    """Load the backend once per process; return it and why it was chosen.

    A backend that cannot load is a usage error naming the ``--backend`` value and its source.
    """
    if BACKEND not in config.stash:
        from kvtest.backends import select_backend

        settings = settings_of(config)
        try:
            config.stash[BACKEND] = select_backend(settings.backend)
        except BackendUnavailable as exc:
            raise pytest.UsageError(
                f"kvtest: --backend {settings.backend} from {settings.sources.get('backend', 'default')} "
                f"cannot be used: {exc}"
            ) from None
    return config.stash[BACKEND]


def marker_settings(item: pytest.Item) -> dict[str, Any]:
    """The ``kv`` marker's settings, checked strictly: unknown keys and bad values are usage errors."""
    marker = item.get_closest_marker("kv")
    if marker is None:
        return {}
    where = f"the kv marker of {item.nodeid}"
    if marker.args:
        raise pytest.UsageError(
            f"kvtest: {where} takes keywords only (topology=..., timeout=...), got {marker.args!r}"
        )
    unknown = set(marker.kwargs) - MARKER_KEYS
    if unknown:
        raise pytest.UsageError(
            f"kvtest: {where} has unknown keyword(s) {', '.join(sorted(unknown))}; "
            f"it accepts {', '.join(sorted(MARKER_KEYS))}"
        )
    out: dict[str, Any] = {}
    for key, parse in (("topology", parse_topology), ("timeout", parse_timeout)):
        if key in marker.kwargs:
            raw = marker.kwargs[key]
            try:
                out[key] = parse(str(raw))
            except ValueError as exc:
                raise pytest.UsageError(f"kvtest: {raw!r} from {where} is invalid: {exc}") from None
    return out
