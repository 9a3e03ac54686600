"""Fault injection from ``KVTEST_SIM_FAULT=<kind>[=<factor>][@<api>][:<role><rank>]``
(e.g. ``flip@pull_blocks:d0``).

Faults that make a call fail, stall or slow down, or a process die:

- ``flip``: one byte of the transferred data ends up wrong on the receiving side (``@swap_blocks``,
  ``@copy_cache``, ``@copy_blocks`` too, only when named: the first byte the local copy wrote).
- ``stall``: the transfer never completes; the call fails with LLM_TIMEOUT after sync_kv_timeout.
- ``linkfail``: link attempts fail (LLM_LINK_FAILED per cluster, or raised by two-sided ``link``).
- ``crash``: the process writes one line to stderr and exits with status 70 when it reaches the api.
- ``slow[=F]``: the transfer completes correctly but takes F times as long (default 2): the call
  sleeps (F - 1) times what it took before it returns, so the measured GB/s drops; it never times
  out. This is how kvtest's own tests show that ``kvtest compare`` catches a slowdown
  (``slow=1.5@pull_blocks:d0``).
- ``teardown``: ``unregister_cache`` raises LLM_FAILED without unregistering; ``finalize`` releases
  everything, then raises LLM_FAILED.
- ``relinkrace[=N]``: the known upstream race ``relink-stale-entity-reap`` on the first N two-sided
  links (default 1) that follow an unlink from the same peer cluster: ``query_register_mem_status``
  says OK, yet the link to that peer is gone (a pull raises LLM_NOT_YET_LINK), as when the real FSM
  thread reaps the old entity after the new one was added.

Semantic faults: the call succeeds but does the wrong thing, as a broken stack could:

- ``misplace``: the first block (or batch slot) lands one block off in the destination.
- ``drop``: the last block (or slot) is not moved.
- ``partial``: only the first half of each block (or slot) is moved.
- ``swaptensors``: the first two tensors moved land in each other's destination tensor.
- ``dstlayers``: the destination layer range is ignored: layers land from destination layer 0.
- ``mapping``: ``swap_blocks`` ignores the mapping's destination: block *s* goes to block *s*.
- ``batch``: the batch index argument is ignored (0 is used): pull_cache's ``batch_index``,
  push_cache's ``src_batch_index``.
- ``lie``: a failure is reported as LLM_SUCCESS: a transfer_cache_async result, a link_clusters code.

Spill faults: the right bytes arrive AND something more is written where nothing may change (they
prove the checks of "this must not change"):

- ``nextblock``: the first block (or slot) moved also lands in the next block the call does not write
  (or the one before, at the end of the cache).
- ``overrun``: the first block moved runs ``OVERRUN_BYTES`` past its end (into bytes the call does not
  write).
- ``nextlayer``: the first source tensor also lands in a destination tensor outside the layer range.
- ``source``: the transfer also writes into its source (16 bytes of the first block, shifted).
- ``refused``: a call that is refused still inverts 16 bytes where it would have written; a
  transfer_cache_async layer the synchronizer refused is sent all the same.

Without ``@api`` a fault applies to every api of its default set; without ``:role`` to every process.
Several faults, comma-separated (``drop@pull_cache:d0,drop@push_cache:d0``), are all active at once:
kvtest's mutation matrix runs one kind against several apis in one pytest run that way.

``KVTEST_SIM_FAULT_SCOPE`` (JSON, ``{"<fault>": ["<pytest node id>", ...]}``) limits a fault to the
tests named (``PYTEST_CURRENT_TEST`` when the LLMDataDist initialises), so faults that would touch
each other's tests can share one pytest run; a fault it does not name applies in every test.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

ENV_VAR = "KVTEST_SIM_FAULT"
SCOPE_ENV_VAR = "KVTEST_SIM_FAULT_SCOPE"
CRASH_EXIT_CODE = 70

TRANSFER_APIS = ("pull_cache", "pull_blocks", "push_cache", "push_blocks", "transfer_cache_async")
LINK_APIS = ("link", "link_clusters")
OTHER_APIS = (
    "init",
    "register_cache",
    "register_blocks_cache",
    "allocate_cache",
    "query_register_mem_status",
    "unlink",
    "unlink_clusters",
    "switch_role",
    "swap_blocks",
    "copy_cache",
    "copy_blocks",
    "allocate_blocks_cache",
    "finalize",
)
#: transfers that take layer ranges
LAYERED_APIS = ("pull_cache", "pull_blocks", "push_cache", "push_blocks", "transfer_cache_async")
#: synchronous transfers (one call, every layer: ``nextlayer`` has the other tensors in reach)
SYNC_APIS = ("pull_cache", "pull_blocks", "push_cache", "push_blocks")
#: calls whose refusal could still write (the destination is local; transfer_cache_async: a layer the
#: synchronizer refused)
REFUSABLE_APIS = ("pull_cache", "pull_blocks", "copy_cache", "copy_blocks", "transfer_cache_async")
TEARDOWN_APIS = ("unregister_cache", "finalize")
KIND_APIS: dict[str, tuple[str, ...]] = {
    "flip": TRANSFER_APIS + ("swap_blocks", "copy_cache", "copy_blocks"),
    "stall": TRANSFER_APIS,
    "linkfail": LINK_APIS,
    "crash": TRANSFER_APIS + LINK_APIS + OTHER_APIS,
    "slow": TRANSFER_APIS,
    "misplace": TRANSFER_APIS + ("swap_blocks",),
    "drop": TRANSFER_APIS + ("swap_blocks",),
    "partial": TRANSFER_APIS + ("swap_blocks",),
    "swaptensors": TRANSFER_APIS + ("swap_blocks",),
    "dstlayers": LAYERED_APIS,
    "mapping": ("swap_blocks",),
    "batch": ("pull_cache", "push_cache"),
    "lie": ("transfer_cache_async", "link_clusters"),
    "teardown": TEARDOWN_APIS,
    "relinkrace": ("link",),
    "nextblock": TRANSFER_APIS,
    "overrun": TRANSFER_APIS,
    "nextlayer": SYNC_APIS,
    "source": TRANSFER_APIS,
    "refused": REFUSABLE_APIS,
}
#: apis a fault without ``@api`` applies to
DEFAULT_APIS: dict[str, tuple[str, ...]] = {
    "flip": TRANSFER_APIS,
    "stall": TRANSFER_APIS,
    "linkfail": LINK_APIS,
    "crash": TRANSFER_APIS,
    "slow": TRANSFER_APIS,
    **{kind: KIND_APIS[kind] for kind in ("misplace", "drop", "partial", "swaptensors", "dstlayers")},
    **{kind: KIND_APIS[kind] for kind in ("mapping", "batch", "lie", "teardown", "relinkrace")},
    **{kind: KIND_APIS[kind] for kind in ("nextblock", "overrun", "nextlayer", "source", "refused")},
}
#: kinds that rewrite which bytes a transfer moves (see :func:`distort`)
MOVE_KINDS = ("misplace", "drop", "partial", "swaptensors")
#: kinds that write more than the right bytes inside a transfer (see :func:`spill`)
SPILL_KINDS = ("nextblock", "overrun", "nextlayer")
#: bytes an ``overrun`` writes past a block's end; bytes ``source`` and ``refused`` change
OVERRUN_BYTES = 16
#: kinds that take ``=<factor>``, with the factor they get without one
FACTOR_DEFAULTS: dict[str, float] = {"slow": 2.0, "relinkrace": 1.0}
#: kinds whose factor is a count (a whole number from 1), not a slowdown above 1
COUNT_KINDS = ("relinkrace",)
#: the largest factor accepted
MAX_FACTOR = 100.0

FORMS = (
    f"accepted: <kind>[=<factor>][@<api>][:<role><rank>], kind one of {'|'.join(KIND_APIS)}, "
    "e.g. flip@pull_blocks:d0 or slow=1.5@pull_blocks:d0"
)
_PATTERN = re.compile(
    r"^(?P<kind>[a-z]+)(?:=(?P<factor>[^@:]*))?(?:@(?P<api>[a-z_]+))?(?::(?P<role>[a-z]+[0-9]+))?$"
)


@dataclass(frozen=True)
class Fault:
    """One injected fault: what goes wrong, at which api (None: every api of the kind), in which role."""

    kind: str
    api: str | None = None
    role: str | None = None
    #: how many times longer a ``slow`` transfer takes; None for kinds without a factor
    factor: float | None = None

    def applies(self, api: str, role: str) -> bool:
        if self.role is not None and self.role != role:
            return False
        if self.api is not None:
            return self.api == api
        return api in DEFAULT_APIS[self.kind]

    def __str__(self) -> str:
        text = self.kind
        if self.factor is not None:
            text += f"={self.factor:g}"
        if self.api:
            text += f"@{self.api}"
        if self.role:
            text += f":{self.role}"
        return text


def parse_fault(text: str) -> Fault:
    """Parse a ``KVTEST_SIM_FAULT`` value; ValueError names the bad value and the accepted forms."""
    match = _PATTERN.match(text.strip())
    if match is None:
        raise ValueError(f"invalid {ENV_VAR} value {text!r}; {FORMS}")
    kind, api, role = match.group("kind"), match.group("api"), match.group("role")
    if kind not in KIND_APIS:
        raise ValueError(f"invalid {ENV_VAR} kind {kind!r} in {text!r}; {FORMS}")
    if api is not None and api not in KIND_APIS[kind]:
        allowed = "|".join(KIND_APIS[kind])
        raise ValueError(f"invalid {ENV_VAR} api {api!r} for {kind} in {text!r}; accepted apis: {allowed}")
    return Fault(kind, api, role, _factor(kind, match.group("factor"), text))


def _factor(kind: str, raw: str | None, text: str) -> float | None:
    if kind not in FACTOR_DEFAULTS:
        if raw is not None:
            takes = "|".join(FACTOR_DEFAULTS)
            raise ValueError(f"invalid {ENV_VAR} value {text!r}: only {takes} takes =<factor>")
        return None
    if raw is None:
        return FACTOR_DEFAULTS[kind]
    try:
        factor = float(raw)
    except ValueError:
        factor = math.nan
    if kind in COUNT_KINDS:
        if not (factor.is_integer() and 1 <= factor <= MAX_FACTOR):
            raise ValueError(
                f"invalid {ENV_VAR} count {raw!r} in {text!r}: {kind}=<n> takes a whole number from 1 "
                f"to {MAX_FACTOR:g}, e.g. {kind}=3"
            )
        return factor
    if not 1 < factor <= MAX_FACTOR:  # also refuses nan and inf
        raise ValueError(
            f"invalid {ENV_VAR} factor {raw!r} in {text!r}: {kind}=<factor> takes a number above 1 "
            f"and at most {MAX_FACTOR:g}, e.g. {kind}=1.5"
        )
    return factor


def parse_faults(text: str) -> tuple[Fault, ...]:
    """Parse a comma-separated ``KVTEST_SIM_FAULT`` value (one fault or several)."""
    return tuple(parse_fault(part) for part in text.split(","))


def fault_from_env(env: Mapping[str, str]) -> tuple[Fault, ...]:
    """The faults of ``KVTEST_SIM_FAULT`` in ``env`` that apply in its running test
    (``KVTEST_SIM_FAULT_SCOPE``, ``PYTEST_CURRENT_TEST``); the sim reads the environment only where
    its context is built (:mod:`kvtest.backends.sim.context`)."""
    text = env.get(ENV_VAR, "")
    faults = parse_faults(text) if text.strip() else ()
    scope = fault_scope(env.get(SCOPE_ENV_VAR, ""))
    if not scope:
        return faults
    running = env.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    return tuple(f for f in faults if str(f) not in scope or running in scope[str(f)])


def fault_scope(text: str) -> dict[str, list[str]]:
    """Parse ``KVTEST_SIM_FAULT_SCOPE``; ValueError names the bad value and the form."""
    if not text.strip():
        return {}
    try:
        scope = json.loads(text)
    except ValueError:
        scope = None
    if not isinstance(scope, dict) or not all(
        isinstance(tests, list) and all(isinstance(t, str) for t in tests) for tests in scope.values()
    ):
        raise ValueError(
            f"invalid {SCOPE_ENV_VAR} value {text[:200]!r}: a JSON object of fault -> list of test node ids, "
            'e.g. {"flip@pull_blocks:d0": ["tests/samples/test_pull_blocks.py::test_pull_blocks[...]"]}'
        )
    for fault in scope:
        parse_fault(fault)  # a fault the scope names is spelled as KVTEST_SIM_FAULT spells it
    return scope


def crash_now(fault: Fault, api: str, role: str) -> None:
    """Exit at once, as a killed process would, after one line that says why."""
    sys.stderr.write(f"kvtest sim fault {fault}: crashing {role} (pid {os.getpid()}) at {api}\n")
    sys.stderr.flush()
    os._exit(CRASH_EXIT_CODE)


#: (source offset, destination offset, bytes) inside one tensor, as kvtest.backends.sim.layout.Span
_Span = tuple[int, int, int]


def distort(
    kind: str, pairs: list[tuple[int, int]], spans: list[_Span], dst_bytes: int | None
) -> tuple[list[tuple[int, int]], list[_Span]]:
    """The (tensor pairs, spans) a transfer with a ``MOVE_KINDS`` fault moves instead of the right ones.

    Pairs are (source tensor, destination tensor); spans are in the direction the data flows.
    ``dst_bytes`` is the size of one destination tensor (None when unknown: ``misplace`` does nothing).
    """
    if kind == "swaptensors" and len(pairs) >= 2:
        (s0, d0), (s1, d1) = pairs[0], pairs[1]
        return [(s0, d1), (s1, d0), *pairs[2:]], spans
    if kind == "drop":
        return pairs, spans[:-1]
    if kind == "partial":
        return pairs, [(so, do, n // 2) for so, do, n in spans]
    if kind == "misplace" and spans and dst_bytes is not None:
        so, do, n = spans[0]
        moved = do + n if do + 2 * n <= dst_bytes else do - n
        if moved >= 0:
            return pairs, [(so, moved, n), *spans[1:]]
    return pairs, spans


def _free(spans: list[_Span], start: int, n: int, dst_bytes: int) -> bool:
    """Whether ``n`` bytes from ``start`` lie inside the tensor and outside every span's destination."""
    if start < 0 or start + n > dst_bytes:
        return False
    return all(start + n <= do or do + size <= start for _, do, size in spans)


def spill(
    kind: str, pairs: list[tuple[int, int]], spans: list[_Span], dst_bytes: int | None, dst_tensors: int
) -> tuple[list[tuple[int, int]], list[_Span]]:
    """The extra (tensor pairs, spans) a ``SPILL_KINDS`` fault moves besides the right ones, never
    onto bytes the right ones write (so the right bytes still arrive); empty where nothing is free.

    ``dst_tensors``: how many destination tensors the addresses reach; ``dst_bytes`` as for
    :func:`distort`.
    """
    if not pairs or not spans:
        return [], []
    if kind == "nextlayer":
        targeted = {d for _, d in pairs}
        free = [t for t in range(dst_tensors) if t not in targeted]
        if not free:
            return [], []
        after = [t for t in free if t > max(targeted)]
        return [(pairs[0][0], after[0] if after else free[-1])], spans
    if dst_bytes is None:
        return [], []
    if kind == "nextblock":
        for so, do, n in spans:
            last, first = max(d + size for _, d, size in spans), min(d for _, d, _ in spans)
            for start in (last, first - n, do + n, do - n):
                if _free(spans, start, n, dst_bytes):
                    return pairs[:1], [(so, start, n)]
        return [], []
    if kind == "overrun":
        for so, do, n in spans:
            k = min(OVERRUN_BYTES, n)
            if _free(spans, do + n, k, dst_bytes):
                return pairs[:1], [(so, do + n, k)]
            if _free(spans, do - k, k, dst_bytes):
                return pairs[:1], [(so + n - k, do - k, k)]
        return [], []
    return [], []
