"""What a :class:`~kvtest.backends.sim.cache_manager.CacheManager` may use of its LLMDataDist.

One narrow handle instead of the LLMDataDist's private members: who this endpoint is (cluster id), its
control plane and transport, the timeout and link state a transfer must honour, its memory pools, the
upstream fixes it emulates, and its fault seam. :class:`~kvtest.backends.sim.datadist.LLMDataDist`
hands one to its cache manager at init.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kvtest.backends.sim.control import ControlPlane
    from kvtest.backends.sim.pool import MemoryPool
    from kvtest.backends.sim.seam import FaultSeam
    from kvtest.backends.sim.transport import Transport

__all__ = ["Endpoint"]


class Endpoint(Protocol):
    @property
    def cluster_id(self) -> int: ...

    @property
    def initialized(self) -> bool: ...

    @property
    def sync_timeout_ms(self) -> int:
        """``llm.SyncKvCacheWaitTime``: how long one transfer may take before LLM_TIMEOUT."""

    @property
    def remote_accessible(self) -> bool:
        """``llm.EnableRemoteCacheAccessible``: caches are registered for one-sided access."""

    @property
    def linked(self) -> bool:
        """Whether this endpoint has linked (registration rules change after the first link)."""

    @property
    def pools(self) -> Mapping[str, MemoryPool]:
        """The memory pools by placement name (``DEVICE``, ``HOST``)."""

    @property
    def fixed(self) -> frozenset[str]:
        """The known upstream issues emulated as fixed (``KVTEST_SIM_FIXED``)."""

    def ctx(self) -> tuple[ControlPlane, Transport]:
        """The control plane and the transport; only while initialized."""

    def publish_agent(self) -> None:
        """Tell the peers this endpoint's transport again (after its registered memory changed)."""

    @property
    def faults(self) -> FaultSeam:
        """Fault injection: the only thing the transfer code asks about faults."""
