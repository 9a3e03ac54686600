"""The one seam between the sim's calls and fault injection: :class:`FaultSeam`.

The link and transfer code asks the seam what happens (does this call crash, which bytes move, what
status is reported, how long it takes) and knows no fault kinds; which kind does what, and the
``KVTEST_SIM_FAULT`` grammar, live in :mod:`kvtest.backends.sim.faults`. Each LLMDataDist instance
builds its own seam from its context's faults at init (a seam counts the relinks it has raced).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

from kvtest.backends.sim.faults import (
    MOVE_KINDS,
    OVERRUN_BYTES,
    SPILL_KINDS,
    Fault,
    crash_now,
    distort,
    spill,
)
from kvtest.backends.sim.status import LLMStatusCode, native_error

__all__ = ["SPOILED_BYTES", "FaultSeam", "Pairs", "Spans"]

#: how many bytes a spoiling write changes (a refused call's, a move's into its source)
SPOILED_BYTES = OVERRUN_BYTES

#: (source tensor, destination tensor) pairs
Pairs = list[tuple[int, int]]
#: (source offset, destination offset, bytes) inside one tensor pair
Spans = list[tuple[int, int, int]]


class FaultSeam:
    """The faults of one process (role ``role``), asked by api; without faults every answer is the
    fault-free one."""

    def __init__(self, faults: Sequence[Fault] = (), role: str = "") -> None:
        self._faults = tuple(faults)
        self._role = role
        self._relinks = 0

    @property
    def faults(self) -> tuple[Fault, ...]:
        return self._faults

    def _find(self, api: str, *kinds: str) -> Fault | None:
        """The first fault of one of ``kinds`` that applies to ``api`` in this process."""
        return next((f for f in self._faults if f.kind in kinds and f.applies(api, self._role)), None)

    # -- where a call starts and ends -----------------------------------------------------------
    def enter(self, api: str) -> None:
        """Where ``api`` starts: a ``crash`` fault exits here, a ``teardown`` fault raises here
        (``finalize``: at :meth:`released`, so a failing finalize still releases everything)."""
        crash = self._find(api, "crash")
        if crash is not None:
            crash_now(crash, api, self._role)
        if api != "finalize":
            self.released(api)

    def released(self, api: str) -> None:
        """After ``api`` released what it held: a ``teardown`` fault raises LLM_FAILED."""
        fault = self._find(api, "teardown")
        if fault is not None:
            raise native_error(api, LLMStatusCode.LLM_FAILED, f"sim fault {fault}: {api} failed")

    def reported(self, api: str, code: LLMStatusCode) -> LLMStatusCode:
        """The status ``api`` reports for ``code``: LLM_SUCCESS under a ``lie`` fault."""
        return LLMStatusCode.LLM_SUCCESS if self._find(api, "lie") else code

    # -- links --------------------------------------------------------------------------------
    def link_fails(self, api: str) -> bool:
        """Whether a link attempt of ``api`` fails (``linkfail``)."""
        return self._find(api, "linkfail") is not None

    def link_reaped(self, relink: bool) -> bool:
        """Whether a two-sided link to a peer is lost as soon as it is made (``relinkrace``, the known
        upstream race relink-stale-entity-reap); ``relink``: this process unlinked that peer before.
        Counts toward the fault's N only when it happens."""
        fault = self._find("link", "relinkrace")
        if fault is None or not relink or self._relinks >= (fault.factor or 1):
            return False
        self._relinks += 1
        return True

    # -- what a transfer is asked to do -----------------------------------------------------------
    def batch_index(self, api: str, index: int) -> int:
        """A batch index argument as ``api`` uses it (0 under ``batch``)."""
        return 0 if self._find(api, "batch") else index

    def ignores_dst_layers(self, api: str) -> bool:
        """Whether ``api`` writes from destination layer 0 whatever range it was given (``dstlayers``)."""
        return self._find(api, "dstlayers") is not None

    def ignores_mapping(self, api: str) -> bool:
        """Whether ``api`` moves block *s* to block *s* whatever the mapping says (``mapping``)."""
        return self._find(api, "mapping") is not None

    # -- what a transfer does -----------------------------------------------------------------
    def moves(
        self, api: str, pairs: Pairs, spans: Spans, dst_bytes: int | None, dst_tensors: int
    ) -> list[tuple[Pairs, Spans]]:
        """The (tensor pairs, spans) groups ``api`` moves: first the right ones, or what a semantic
        fault moves instead; then what a spill fault adds onto bytes those do not write.

        ``dst_bytes``: one destination tensor's size (None when unknown); ``dst_tensors``: how many
        destination tensors the call's addresses reach.
        """
        fault = self._find(api, *MOVE_KINDS)
        if fault is not None:
            pairs, spans = distort(fault.kind, pairs, spans, dst_bytes)
        groups = [(pairs, spans)]
        for kind in SPILL_KINDS:
            if self._find(api, kind) is not None:
                groups.append(spill(kind, pairs, spans, dst_bytes, dst_tensors))
        return groups

    def corrupts(self, api: str) -> bool:
        """Whether one byte of what ``api`` moves arrives wrong (``flip``)."""
        return self._find(api, "flip") is not None

    def stalls(self, api: str) -> bool:
        """Whether ``api``'s transfer never completes (``stall``)."""
        return self._find(api, "stall") is not None

    def spoils_source(self, api: str) -> bool:
        """Whether ``api`` also writes into its source after the move (``source``)."""
        return self._find(api, "source") is not None

    def spoils_when_refused(self, api: str) -> bool:
        """Whether a refused ``api`` still writes where it would have written (``refused``)."""
        return self._find(api, "refused") is not None

    @contextlib.contextmanager
    def slowed(self, api: str) -> Iterator[None]:
        """Around what ``api`` does: under ``slow=F`` it takes F times as long when it succeeds (it never
        turns into a timeout: that is ``stall``), so the GB/s a caller measures drops by F."""
        fault = self._find(api, "slow")
        began = time.monotonic()
        yield
        if fault is not None and fault.factor is not None:
            time.sleep((fault.factor - 1) * (time.monotonic() - began))
