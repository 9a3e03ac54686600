"""Per-transfer timing (bytes, seconds and GB/s, decimal: bytes / seconds / 1e9) and per-phase cost.

A test (or its fixtures) times each transfer with :meth:`TransferLog.measure`; the plugin turns the
log into JUnit properties (:meth:`TransferLog.as_properties`) and results-file entries.

Where a test's time goes beside its transfers is :class:`PhaseClock`'s: the node, the pattern and
check code and the rendezvous wrap what they do in :func:`phase` (``init``, ``register``, ``link``,
``fill``, ``expect``, ``transfer``, ``check``, ``teardown``, ``wait``), timed with
``time.perf_counter``. Phases nest: an inner phase's time is not counted in the outer one, so the
phases of a role add up to at most its wall time.

Every timed transfer is one sample. An API's figure in a test is *gateable* (``kvtest compare`` may
call it a regression) only with at least :data:`GATE_MIN_SAMPLES` samples, each of at least
:data:`GATE_MIN_BYTES` bytes, whose median lasts at least :data:`GATE_MIN_SECONDS`: a one-shot
transfer of a few KiB measures timer resolution and scheduling, not bandwidth. Samples whose
interquartile range exceeds :data:`GATE_MAX_SPREAD` of their median are too noisy to resolve a
drop of a few percent either (a host busy with other work), and are not gateable.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar

from kvtest.host import busy

__all__ = [
    "PHASES",
    "GATE_MAX_SPREAD",
    "GATE_MIN_BYTES",
    "GATE_MIN_SAMPLES",
    "GATE_MIN_SECONDS",
    "TOO_NOISY",
    "TOO_SMALL",
    "ApiSummary",
    "PhaseClock",
    "TransferEntry",
    "TransferLog",
    "TransferRecord",
    "gate_note",
    "gbps",
    "phase",
    "sample_gbps",
    "sample_spread",
    "summarize",
]

#: the phases a test's time is split into, in the order a test goes through them
PHASES = ("init", "register", "link", "fill", "expect", "transfer", "check", "teardown", "wait")

# A perf_counter interval can read 0 for a tiny transfer; never divide by it.
_MIN_SECONDS = 1e-9

#: what a gateable figure needs: samples (timed transfers), bytes per sample, median seconds per sample
GATE_MIN_SAMPLES = 5
GATE_MIN_BYTES = 1 << 20
GATE_MIN_SECONDS = 1e-3
#: the largest spread of gateable samples: interquartile range of the GB/s over their median
GATE_MAX_SPREAD = 0.5
#: how a figure that cannot be gated is marked (table, results file, chart)
TOO_SMALL = "too small to gate"
TOO_NOISY = "too noisy to gate"


def gbps(nbytes: int, seconds: float) -> float:
    """Decimal gigabytes per second."""
    return nbytes / max(seconds, _MIN_SECONDS) / 1e9


class ApiSummary(TypedDict):
    """Totals for one API over a test; the latency percentiles are ``None`` for a single transfer.

    ``median_gbps`` is the median of the per-sample GB/s; ``gate_note`` says why the figure is not
    gateable (``"too small to gate: 1 sample (needs 5)"``, ``"too noisy to gate: ..."``), None when
    ``gateable``.
    """

    count: int
    bytes: int
    seconds: float
    gbps: float
    p50_ms: float | None
    p99_ms: float | None
    median_gbps: float
    gateable: bool
    gate_note: str | None


class TransferEntry(TypedDict):
    """A :class:`TransferRecord` as JSON (results file, messages between roles)."""

    role: str
    api: str
    bytes: int
    seconds: float
    gbps: float


@dataclass(frozen=True)
class TransferRecord:
    """One timed transfer. ``role`` is the process that timed it (``"d0"``), empty when unknown."""

    api: str
    nbytes: int
    seconds: float
    role: str = ""

    @property
    def gbps(self) -> float:
        return gbps(self.nbytes, self.seconds)

    def to_json(self) -> TransferEntry:
        return TransferEntry(role=self.role, api=self.api, bytes=self.nbytes, seconds=self.seconds,
                             gbps=self.gbps)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TransferRecord:
        """The inverse of :meth:`to_json`; ``gbps`` is recomputed, never trusted."""
        return cls(api=str(data["api"]), nbytes=int(data["bytes"]), seconds=float(data["seconds"]),
                   role=str(data.get("role", "")))


def _percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) over a sorted list."""
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _median(values: list[float]) -> float:
    return _percentile(sorted(values), 0.5)


def sample_gbps(records: Iterable[TransferRecord]) -> list[float]:
    """The GB/s of each record: the samples ``kvtest compare`` tests."""
    return [r.gbps for r in records]


def _size(nbytes: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes:.0f} B"


def gate_note(records: Iterable[TransferRecord]) -> str | None:
    """Why one API's samples cannot be gated (``"too small to gate: ..."``); None when they can."""
    group = list(records)
    if not group:
        return f"{TOO_SMALL}: no samples"
    reasons = []
    if len(group) < GATE_MIN_SAMPLES:
        plural = "" if len(group) == 1 else "s"
        reasons.append(f"{len(group)} sample{plural} (needs {GATE_MIN_SAMPLES})")
    smallest = min(r.nbytes for r in group)
    if smallest < GATE_MIN_BYTES:
        reasons.append(f"{_size(smallest)} a sample (needs {_size(GATE_MIN_BYTES)})")
    took = _median([r.seconds for r in group])
    if took < GATE_MIN_SECONDS:
        reasons.append(f"{took * 1e3:.3g} ms a sample (needs {GATE_MIN_SECONDS * 1e3:g} ms)")
    if reasons:
        return f"{TOO_SMALL}: {', '.join(reasons)}"
    spread = sample_spread(sample_gbps(group))
    if spread > GATE_MAX_SPREAD:
        return (f"{TOO_NOISY}: the samples' interquartile range is {spread * 100:.0f}% of their median "
                f"(needs <= {GATE_MAX_SPREAD * 100:.0f}%)")
    return None


def sample_spread(values: list[float]) -> float:
    """Interquartile range over median: 0.1 means the middle half of the samples lies within 10 %."""
    ordered = sorted(values)
    middle = _percentile(ordered, 0.5)
    if middle <= 0:
        return math.inf
    return (_percentile(ordered, 0.75) - _percentile(ordered, 0.25)) / middle


def summarize(records: Iterable[TransferRecord]) -> dict[str, ApiSummary]:
    """Per-API totals, in first-seen order: GB/s is total bytes over total seconds."""
    by_api: dict[str, list[TransferRecord]] = {}
    for record in records:
        by_api.setdefault(record.api, []).append(record)
    out: dict[str, ApiSummary] = {}
    for api, group in by_api.items():
        total_bytes = sum(r.nbytes for r in group)
        total_seconds = sum(r.seconds for r in group)
        ms = sorted(r.seconds * 1e3 for r in group)
        repeated = len(ms) > 1
        note = gate_note(group)
        out[api] = ApiSummary(
            count=len(group),
            bytes=total_bytes,
            seconds=total_seconds,
            gbps=gbps(total_bytes, total_seconds),
            p50_ms=_percentile(ms, 0.50) if repeated else None,
            p99_ms=_percentile(ms, 0.99) if repeated else None,
            median_gbps=_median(sample_gbps(group)),
            gateable=note is None,
            gate_note=note,
        )
    return out


_F = TypeVar("_F", bound=Callable[..., Any])


class PhaseClock:
    """Wall seconds per phase of one test on one role, measured with ``time.perf_counter``.

    Exclusive time: entering a phase inside another stops the outer one's clock until the inner one
    ends. Only the thread that made the clock is timed (a watchdog thread's calls are not this test's
    phases).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[list[Any]] = []  # [name, since]
        self._thread = threading.get_ident()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if threading.get_ident() != self._thread:
            yield
            return
        now = time.perf_counter()
        if self._stack:
            outer = self._stack[-1]
            self.seconds[outer[0]] = self.seconds.get(outer[0], 0.0) + now - outer[1]
        self._stack.append([name, now])
        try:
            yield
        finally:
            end = time.perf_counter()
            inner = self._stack.pop()
            self.seconds[name] = self.seconds.get(name, 0.0) + end - inner[1]
            if self._stack:
                self._stack[-1][1] = end

    def timed(self, name: str, fn: _F) -> _F:
        """``fn`` with every call timed as phase ``name``."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def activate(self) -> None:
        """Make this the clock :func:`phase` times into, until another is activated."""
        global _ACTIVE
        _ACTIVE = self

    def rounded(self) -> dict[str, float]:
        """The phases as the results file holds them, in :data:`PHASES` order then others'."""
        order = {name: i for i, name in enumerate(PHASES)}
        return {k: round(v, 6) for k, v in sorted(self.seconds.items(), key=lambda kv: order.get(kv[0], 99))}


_ACTIVE: PhaseClock | None = None


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the ``with`` body as phase ``name`` of the running test (a no-op outside a test)."""
    clock = _ACTIVE
    if clock is None:
        yield
        return
    with clock.phase(name):
        yield


@dataclass
class TransferLog:
    """The transfers one process timed during one test.

    :param role: stamped on every record (``"p0"``, ``"d1"``...).
    """

    role: str = ""
    records: list[TransferRecord] = field(default_factory=list)
    #: where the test's time went, by phase (see :class:`PhaseClock`)
    clock: PhaseClock = field(default_factory=PhaseClock)

    @contextmanager
    def measure(self, api: str, nbytes: int) -> Iterator[None]:
        """Time the ``with`` body as one transfer of ``nbytes`` through ``api`` (phase ``transfer``).

        Nothing is recorded when the body raises: a failed transfer has no bandwidth. Background work
        on the host steps aside meanwhile (:mod:`kvtest.host.busy`).
        """
        with self.clock.phase("transfer"), busy.busy(busy.TIMING):
            start = time.perf_counter()
            yield
            self.add(api, nbytes, time.perf_counter() - start)

    def add(self, api: str, nbytes: int, seconds: float) -> TransferRecord:
        """Record a transfer timed elsewhere (e.g. by a peer process)."""
        if nbytes < 0 or seconds < 0:
            raise ValueError(f"{api}: bytes and seconds must not be negative (got {nbytes}, {seconds})")
        record = TransferRecord(api=api, nbytes=nbytes, seconds=seconds, role=self.role)
        self.records.append(record)
        return record

    def summary(self) -> dict[str, ApiSummary]:
        return summarize(self.records)

    def as_properties(self, prefix: str = "kv") -> list[tuple[str, object]]:
        """``(name, value)`` pairs for ``item.user_properties``: ``kv.<api>.bytes``, ``.gbps``, ...

        ``count``, ``bytes``, ``seconds`` and ``gbps`` always appear; ``p50_ms``/``p99_ms`` only for
        an API timed more than once. Floats are rounded so the JUnit XML stays readable.
        """
        props: list[tuple[str, object]] = []
        for api, s in self.summary().items():
            props += [
                (f"{prefix}.{api}.count", s["count"]),
                (f"{prefix}.{api}.bytes", s["bytes"]),
                (f"{prefix}.{api}.seconds", round(s["seconds"], 6)),
                (f"{prefix}.{api}.gbps", round(s["gbps"], 3)),
            ]
            if s["p50_ms"] is not None and s["p99_ms"] is not None:
                props += [
                    (f"{prefix}.{api}.p50_ms", round(s["p50_ms"], 3)),
                    (f"{prefix}.{api}.p99_ms", round(s["p99_ms"], 3)),
                ]
        return props
