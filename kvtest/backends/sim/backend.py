"""The ``sim`` backend for the fixtures: the emulation module plus CPU versions of the device helpers."""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Sequence
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

    def bind(self, store: Store, namespace: str, role: str) -> None:
        self.api.configure(store, namespace, role)

    def set_device(self, device_id: int) -> None:
        """Nothing to select on CPU."""

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        """A contiguous copy that the sim counts as device memory (``Placement.DEVICE`` registration
        refuses any other memory, as HCCL does on an NPU)."""
        from kvtest.backends.sim.device import to_device

        return to_device(host)

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


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Let this process reuse the memory it frees instead of handing it back to the kernel.

    A test allocates caches, patterns and expected states of up to a few hundred MiB and frees them
    at its end; glibc serves such blocks with ``mmap`` and unmaps them on free, so the next test's
    tensors are fresh pages again, and touching a fresh page costs about as much as writing a whole
    pattern into touched memory (measured here: 640 MiB of zeros 0.76 s fresh, a pattern into touched
    memory 0.13 s). From the heap, freed blocks are reused: the process keeps its peak, no more.
    False where there is no glibc ``mallopt`` (then nothing changes).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # every block below the threshold comes from the heap (glibc releases before 2.35 accept 1 GiB; later
    # ones cap it at 32 MiB, which still covers the nightly profile's tensors)
    heap = mallopt(_M_MMAP_THRESHOLD, 1 << 30) or mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    return bool(heap and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def load() -> SimBackend:
    """The sim backend; :class:`BackendUnavailable` with the fix when NIXL cannot be imported."""
    try:
        import nixl_cu12._api  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means the same fix
        raise BackendUnavailable(
            f"sim backend needs NIXL (nixl_cu12) but it cannot be imported ({exc}); fix: {INSTALL_HINT}"
        ) from exc
    from kvtest.backends import sim

    keep_freed_memory()
    return SimBackend(sim)
