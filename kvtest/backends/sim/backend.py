"""The ``sim`` backend for the fixtures: the emulation module plus CPU versions of the device helpers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Sequence
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING

from kvtest.backends.protocol import BackendUnavailable

if TYPE_CHECKING:
    import torch
    from torch.distributed import Store

INSTALL_HINT = "pip install 'kvtest[sim]'"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


class SimBackend:
    """llm_datadist emulated on CPU memory; device tensors are plain contiguous CPU tensors."""

    name = "sim"

    def __init__(self, api: ModuleType) -> None:
        self.api = api
        self._toucher: threading.Thread | None = None

    def bind(self, store: Store, namespace: str, role: str) -> None:
        self.api.configure(store, namespace, role)

    def set_device(self, device_id: int) -> None:
        """Nothing to select on CPU."""

    def warm_up(self, role: str) -> None:
        """Make the first NIXL agent in the background (``transport.warm_up``)."""
        from kvtest.backends.sim.transport import warm_up

        warm_up(role)

    def touch_ahead(self, device_bytes: int, first: bool, after: int = 0) -> None:
        """Touch ``device_bytes`` of the sim's device memory (host memory, from
        :mod:`kvtest.host.reused_memory`) ahead in a background thread at the lowest priority
        (``reused_memory.prefault``; not beside a timed transfer, nor, unless ``first``, beside the
        touching of a role whose tests come first, nor beside that of the ``after`` roles that need theirs
        before this one). A role that meets its first large cache late (p1
        of the nightly 2p1d test: 1.28 GiB) otherwise faults it fresh inside that test while its peers
        wait (4.4 s of fill there, 0.3 s on touched pages)."""
        from kvtest.host import reused_memory

        if device_bytes >= reused_memory.MIN_BYTES:
            self._toucher = threading.Thread(target=reused_memory.prefault, args=(device_bytes, first, after),
                                             name="kvtest-sim-prefault", daemon=True)
            self._toucher.start()

    def touched_ahead(self, timeout_s: float) -> bool:
        """Wait for the touching thread :meth:`touch_ahead` started (if any) to end."""
        if self._toucher is None:
            return True
        self._toucher.join(timeout_s)
        return not self._toucher.is_alive()

    def after_failure(self) -> None:
        """Destroy the idle NIXL agents: one reused after a test that lost its peer's connection (the
        network-flap test) crashed its process later, at garbage collection."""
        from kvtest.backends.sim.transport import drop_idle_agents

        drop_idle_agents()

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        """A contiguous copy that the sim counts as device memory (``Placement.DEVICE`` registration
        refuses any other memory, as HCCL does on an NPU)."""
        from kvtest.backends.sim.device import to_device

        return to_device(host)

    def make_on_device(
        self, shape: Sequence[int], dtype: torch.dtype, write: Callable[[torch.Tensor], object]
    ) -> torch.Tensor:
        """Device memory (see :meth:`to_device`) written in place by ``write``."""
        from kvtest.backends.sim.device import empty

        tensor = empty(shape, dtype)
        write(tensor)
        return tensor

    def tensors_at(
        self, shape: Sequence[int], dtype: torch.dtype, addrs: Sequence[int]
    ) -> list[torch.Tensor]:
        views: list[torch.Tensor] = self.api.create_tensors(list(shape), dtype, list(addrs))
        return views

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().clone()

    def physical_id(self, device_id: int) -> int:
        """Emulated devices have no physical numbering of their own."""
        return device_id

    def device_ip(self, device_id: int) -> str:
        """A loopback address: sim's ranktable device ips are validated as JSON, never dialled."""
        return "127.0.0.1"

    def describe(self) -> dict[str, str]:
        return {
            "backend": self.name,
            "torch": _version("torch"),
            "nixl": _version("nixl-cu12"),
            "kvtest": _version("kvtest"),
            "host": socket.gethostname(),
        }


def load() -> SimBackend:
    """The sim backend; :class:`BackendUnavailable` with the fix when NIXL cannot be imported."""
    try:
        import nixl_cu12._api  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means the same fix
        raise BackendUnavailable(
            f"sim backend needs NIXL (nixl_cu12) but it cannot be imported ({exc}); fix: {INSTALL_HINT}"
        ) from exc
    from kvtest.backends import sim

    return SimBackend(sim)
