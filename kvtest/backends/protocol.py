"""The contract between the fixtures and a hardware backend (``npu`` or ``sim``).

A test body is written once against the llm_datadist API (``backend.api``); only the few things that
differ by hardware go through the methods below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch.distributed import Store


class BackendUnavailable(Exception):
    """The backend cannot be used on this machine; ``str(exc)`` says what is missing and how to fix it."""


@runtime_checkable
class Backend(Protocol):
    #: "npu" or "sim"
    name: str
    #: the llm_datadist-compatible module: ``llm_datadist`` itself or ``kvtest.backends.sim``
    api: ModuleType

    def bind(self, store: Store, namespace: str, role: str) -> None:
        """Attach the backend to this test's control plane (sim uses it for metadata; npu ignores it).

        :param store: a torch.distributed store shared by every role of the run.
        :param namespace: a prefix unique to this run and test; nothing outside it is read.
        :param role: this process's role name, e.g. ``"p0"`` or ``"d1"``.
        """

    def set_device(self, device_id: int) -> None:
        """Select the device this process works on (``torch.npu.set_device`` on npu).

        ``device_id`` is *logical*, as ``torch.npu.set_device`` and ``LLMConfig.device_id`` take it.
        """

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        """A device copy of a host tensor (``.npu()`` on npu, a fresh contiguous CPU tensor on sim)."""

    def make_on_device(
        self, shape: Sequence[int], dtype: torch.dtype, write: Callable[[torch.Tensor], object]
    ) -> torch.Tensor:
        """A device tensor of ``shape`` and ``dtype`` holding what ``write`` puts into a contiguous host
        tensor of that shape (whose contents are unspecified before): :meth:`to_device` of the written
        host tensor on npu; on sim, where device memory is host memory, written where it lies (one pass
        over the memory instead of two, and no host buffer)."""

    def tensors_at(
        self, shape: Sequence[int], dtype: torch.dtype, addrs: Sequence[int]
    ) -> list[torch.Tensor]:
        """Tensors viewing memory the backend owns (e.g. ``Cache.tensor_addrs`` of a pool cache)."""

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host (CPU) copy of a device tensor, for byte comparison."""

    def physical_id(self, device_id: int) -> int:
        """The physical id of logical device ``device_id``, as the rank table's ``device_id`` names it."""

    def device_ip(self, device_id: int) -> str:
        """The IP of logical device ``device_id`` as the two-sided link's rank table needs it.

        Asked only where a rank table is built (``hccn_tool`` on npu), never at init.
        """

    def warm_up(self, role: str) -> None:
        """The session starts and this role will run tests that make an LLMDataDist: do the process's
        one-time set-up now, in the background, rather than inside the first test (sim: its first NIXL
        agent). Must return at once."""

    def touch_ahead(self, device_bytes: int, first: bool, after: int = 0) -> None:
        """Make ``device_bytes`` of device memory ready in the background (sim: host pages touched
        ahead), ``first`` when this role's tests are among the run's first (the others' touching waits
        for it on a shared host); ``after``: how many of the other roles need theirs before this one does
        (:func:`kvtest.run.touch_ahead.touches_after`; this role's touching waits for theirs).
        ``device_bytes``: the most memory one side's KV cache or memory pools take among this role's
        selected tests (:func:`kvtest.cases.device_bytes`). Must return at once."""

    def touched_ahead(self, timeout_s: float) -> bool:
        """Wait, at most ``timeout_s``, until the memory the last :meth:`touch_ahead` makes ready is ready;
        whether it is (True when there is nothing to wait for)."""

    def after_failure(self) -> None:
        """A test of this process failed: drop what the backend keeps from test to test (the sim's idle
        NIXL agents), so that nothing the failure may have left broken serves the next test."""

    def describe(self) -> dict[str, str]:
        """Versions and facts for the environment fingerprint (backend name included)."""
