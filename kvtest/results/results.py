"""The ``--kv-results`` JSON file: per test, the outcome on every role and every timed transfer.

The schema is documented in ``docs/results.md``. :class:`ResultsWriter` rewrites the whole file
atomically after every test, so a crash or a kill never leaves a torn file or loses a finished test.
:func:`load_results` validates a file completely and raises :class:`ResultsError` with a one-line
message naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypedDict, Union

from kvtest import __version__
from kvtest.results.metrics import TOO_SMALL, ApiSummary, TransferEntry, TransferRecord, summarize

__all__ = [
    "FAILURES",
    "OUTCOMES",
    "Cost",
    "SCHEMA_VERSION",
    "ResultsError",
    "Results",
    "ResultsWriter",
    "KnownIssueEntry",
    "RoleEntry",
    "RoleInfo",
    "TestEntry",
    "TransferEntry",
    "load_results",
    "role_entry",
    "cost_of",
    "phase_totals",
    "transfer_records",
    "write_atomically",
]

#: the value of the top-level ``"kvtest_results"`` key this kvtest writes and reads
SCHEMA_VERSION = 1
#: allowed test and role outcomes (pytest's, with "error" for setup/teardown failures)
OUTCOMES = ("passed", "failed", "skipped", "error")
#: what a failure is blamed on (kvtest.run.failure): optional fields, null when nothing failed
FAILURES = ("environment", "product")


class RoleEntry(TypedDict):
    """One role's part of a test. ``step`` is where it stopped (``"push"``), None when it finished."""

    outcome: str
    step: str | None
    message: str | None
    duration_s: float
    #: "environment" or "product" when the role failed (see :data:`FAILURES`), else None
    failure: str | None
    #: wall seconds by phase (kvtest.results.metrics.PHASES, measured) plus ``other``: the rest of
    #: ``duration_s`` (pytest, fixtures, the body's own code); empty in files from before kvtest 0.3
    phases: dict[str, float]


class KnownIssueEntry(TypedDict):
    """The known upstream issue a test hit (``state`` "hit": it xfailed as expected) or that is gone
    (``state`` "fixed": it passed, a strict XPASS); see :mod:`kvtest.known_issues`."""

    id: str
    state: str


class RoleInfo(TypedDict):
    """One role of the run (top-level ``roles``, optional: newer than kvtest 0.2.0): where it ran and its
    environment fingerprint, as it said at the handshake."""

    host: str
    pid: int
    fingerprint: dict[str, str]


class Cost(TypedDict):
    """What a test cost beside its transfers (derived from roles and transfers, never stored apart).

    ``wall_s`` is the longest role's duration, ``transfer_s`` the longest time one role spent inside
    timed transfer calls, ``other_s`` the rest of the wall time: kvtest and the test body (setup,
    fill, check, rendezvous, teardown).
    """

    wall_s: float
    transfer_s: float
    other_s: float


class TestEntry(TypedDict):
    outcome: str
    roles: dict[str, RoleEntry]
    transfers: list[TransferEntry]
    summary: dict[str, ApiSummary]
    known_issue: KnownIssueEntry | None
    cost: Cost
    #: "environment" or "product" when the test failed or errored, else None
    failure: str | None
    #: the one line that decided ``failure`` (``d0 never joined within 120s at tcp://...``)
    failure_cause: str | None


def cost_of(roles: Mapping[str, RoleEntry], transfers: Iterable[Mapping[str, Any]]) -> Cost:
    """The :class:`Cost` of a test from its role entries and its transfers (JSON form)."""
    inside: dict[str, float] = {}
    for t in transfers:
        inside[str(t["role"])] = inside.get(str(t["role"]), 0.0) + float(t["seconds"])
    wall = max((r["duration_s"] for r in roles.values()), default=0.0)
    transfer = max(inside.values(), default=0.0)
    return Cost(wall_s=wall, transfer_s=transfer, other_s=max(0.0, wall - transfer))


class ResultsError(Exception):
    """A results file that cannot be used; ``str()`` is one line naming the file and the problem."""


def role_entry(outcome: str, *, step: str | None = None, message: str | None = None,
                duration_s: float = 0.0, failure: str | None = None,
                phases: Mapping[str, float] | None = None) -> RoleEntry:
    """Build a :class:`RoleEntry`, checking the outcome; an empty step or message becomes None.

    ``phases`` are the measured ones; ``other`` (``duration_s`` less their sum) is added here.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
    _check_failure(failure)
    return RoleEntry(outcome=outcome, step=step or None, message=message or None,
                     duration_s=float(duration_s), failure=failure,
                     phases=_with_other(phases or {}, float(duration_s)))


def _with_other(phases: Mapping[str, float], duration_s: float) -> dict[str, float]:
    measured = {str(k): round(float(v), 6) for k, v in phases.items() if k != OTHER}
    if not measured:
        return {}
    return {**measured, OTHER: round(max(0.0, duration_s - sum(measured.values())), 6)}


#: the phase holding what no measured phase covers
OTHER = "other"


def phase_totals(tests: Iterable[TestEntry]) -> dict[str, float]:
    """Seconds per phase summed over every role of ``tests``, biggest first."""
    totals: dict[str, float] = {}
    for entry in tests:
        for role in entry["roles"].values():
            for name, seconds in role.get("phases", {}).items():
                totals[name] = totals.get(name, 0.0) + seconds
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def _check_failure(failure: str | None) -> None:
    if failure is not None and failure not in FAILURES:
        raise ValueError(f"failure must be one of {', '.join(FAILURES)} or None, got {failure!r}")


def transfer_records(entry: TestEntry) -> list[TransferRecord]:
    """The transfers of a test entry as :class:`TransferRecord` objects."""
    return [TransferRecord.from_json(t) for t in entry["transfers"]]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Results:
    """A loaded results file."""

    path: Path
    kvtest_version: str
    created: str
    run_id: str
    fingerprint: dict[str, str]
    #: by pytest node id, in the order the tests finished
    tests: dict[str, TestEntry]
    #: every role's host and fingerprint, by role (empty in files from kvtest 0.2.0 and before)
    roles: dict[str, RoleInfo] = field(default_factory=dict)
    #: how the roles' stacks differ ("driver 23.0 on p0 but 24.1 on d0"); empty when they agree
    stack_differences: tuple[str, ...] = ()


class ResultsWriter:
    """Keeps a run's results and rewrites ``path`` after every :meth:`add`.

    The file is written once at construction (with no tests), so even a run that dies in its first
    test leaves a valid file naming the run and its fingerprint.
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, run_id: str,
                 fingerprint: Mapping[str, str]) -> None:
        """``path=None`` keeps the results in memory only (for the terminal summary)."""
        self.path = Path(path) if path is not None else None
        self._doc: dict[str, Any] = {
            "kvtest_results": SCHEMA_VERSION,
            "kvtest_version": __version__,
            "created": _now(),
            "run_id": run_id,
            "fingerprint": {str(k): str(v) for k, v in fingerprint.items()},
            "tests": {},
        }
        #: each test's entry as it stands in the file (see _write), by node id, in the file's order
        self._texts: dict[str, str] = {}
        self._write()

    @property
    def tests(self) -> Mapping[str, TestEntry]:
        return dict(self._doc["tests"])

    def add(self, nodeid: str, outcome: str, roles: Mapping[str, RoleEntry],
            transfers: Iterable[TransferRecord | Mapping[str, Any]] = (),
            known_issue: Mapping[str, str] | None = None, failure: str | None = None,
            failure_cause: str | None = None,
            phases: Mapping[str, Mapping[str, float]] | None = None) -> TestEntry:
        """Record one test (replacing an earlier entry for the same node id) and rewrite the file.

        :param roles: by role name; build entries with :func:`role_entry`.
        :param transfers: records, or their JSON form (:meth:`TransferRecord.to_json`) as peers
            publish them; GB/s is recomputed from bytes and seconds.
        :param failure: what a failed or errored test is blamed on (:data:`FAILURES`), with the
            line that says why in ``failure_cause``; kept only when the test failed or errored.
        :param phases: each role's measured phases (:class:`kvtest.results.metrics.PhaseClock`), by role.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"{nodeid}: outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        _check_failure(failure)
        if outcome not in ("failed", "error"):
            failure = failure_cause = None
        recs = [t if isinstance(t, TransferRecord) else TransferRecord.from_json(t) for t in transfers]
        role_entries = {name: role_entry(r["outcome"], step=r["step"], message=r["message"],
                                         duration_s=r["duration_s"], failure=r.get("failure"),
                                         phases=(phases or {}).get(name, r.get("phases")))
                        for name, r in roles.items()}
        entries = [r.to_json() for r in recs]
        entry = TestEntry(
            outcome=outcome,
            roles=role_entries,
            transfers=entries,
            summary=summarize(recs),
            known_issue=None if known_issue is None else KnownIssueEntry(
                id=str(known_issue["id"]), state=str(known_issue["state"])),
            cost=cost_of(role_entries, entries),
            failure=failure,
            failure_cause=failure_cause or None if failure else None,
        )
        tests: dict[str, TestEntry] = self._doc["tests"]
        tests.pop(nodeid, None)
        tests[nodeid] = entry
        self._texts.pop(nodeid, None)
        self._texts[nodeid] = _TEST_INDENT + json.dumps(nodeid) + ": " + json.dumps(
            entry, indent=2, allow_nan=False).replace("\n", "\n" + _TEST_INDENT)
        self._write()
        return entry

    def set_roles(self, roles: Mapping[str, RoleInfo], stack_differences: Iterable[str] = ()) -> None:
        """Record every role's host and fingerprint and how their stacks differ; rewrite the file."""
        self._doc["roles"] = {
            str(name): RoleInfo(host=str(r["host"]), pid=int(r["pid"]),
                                fingerprint={str(k): str(v) for k, v in r["fingerprint"].items()})
            for name, r in roles.items()
        }
        self._doc["stack_differences"] = [str(d) for d in stack_differences]
        self._write()

    def _write(self) -> None:
        """The file, as ``json.dumps(doc, indent=2)`` writes it, from each test's entry serialized
        once: the whole document every test made p0 spend 6 ms a test in json's pure-Python indenting
        encoder by the end of a smoke run (0.42 s in all), before it could announce the next test."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        head = json.dumps({**self._doc, "tests": _TESTS_MARK}, indent=2, allow_nan=False)
        tests = "{\n" + ",\n".join(self._texts.values()) + "\n  }" if self._texts else "{}"
        # (a raw newline starts the key's line: no string value, escaped as JSON, can hold one)
        key = '\n  "tests": '
        write_atomically(self.path, head.replace(key + json.dumps(_TESTS_MARK), key + tests, 1) + "\n")


#: what stands for the tests in the document's text until they are put in
_TESTS_MARK = "kvtest: the tests"
#: a test entry's indent: the document's "tests" is at depth 1, its entries at depth 2
_TEST_INDENT = "    "


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: a reader (or a kill) never sees a torn file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- loading -------------------------------------------------------------------------------------

_Number = Union[int, float]


class _Bad(Exception):
    """A schema problem at a JSON location; turned into ResultsError with the file name."""


def _need(obj: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    # bool is an int subclass in Python, but true/false is never a valid count or duration here
    if isinstance(obj, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _Bad(f"{where} must be {what}, got {json.dumps(obj)}")
    if not isinstance(obj, kind):
        raise _Bad(f"{where} must be {what}, got {_short(obj)}")
    return obj


def _short(obj: Any) -> str:
    text = json.dumps(obj)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(obj: Any, where: str, *, optional: bool = False) -> _Number | None:
    if obj is None and optional:
        return None
    value: _Number = _need(obj, (int, float), where, "a number")
    if not math.isfinite(value) or value < 0:
        raise _Bad(f"{where} must be a finite number >= 0, got {value}")
    return value


def _outcome(obj: Any, where: str) -> str:
    value: str = _need(obj, str, where, "a string")
    if value not in OUTCOMES:
        raise _Bad(f"{where} must be one of {'|'.join(OUTCOMES)}, got {value!r}")
    return value


def _keys(obj: dict[str, Any], required: Iterable[str], where: str) -> None:
    missing = [k for k in required if k not in obj]
    if missing:
        raise _Bad(f"{where} lacks {', '.join(repr(k) for k in missing)}")


def _role(obj: Any, where: str) -> RoleEntry:
    _need(obj, dict, where, "an object")
    _keys(obj, ("outcome", "step", "message", "duration_s"), where)
    for key in ("step", "message"):
        if obj[key] is not None:
            _need(obj[key], str, f"{where}.{key}", "a string or null")
    return RoleEntry(outcome=_outcome(obj["outcome"], f"{where}.outcome"), step=obj["step"],
                      message=obj["message"], duration_s=float(_number(obj["duration_s"],
                                                                        f"{where}.duration_s") or 0),
                      failure=_failure(obj.get("failure"), f"{where}.failure"),
                      phases=_phase_map(obj.get("phases", {}), f"{where}.phases"))


def _phase_map(obj: Any, where: str) -> dict[str, float]:
    """Optional (files from before phases were measured lack it: read as empty)."""
    _need(obj, dict, where, "an object")
    return {str(k): float(_number(v, f"{where}[{k!r}]") or 0) for k, v in obj.items()}


def _failure(obj: Any, where: str) -> str | None:
    """Optional (files written before kvtest classified failures lack it: read as null)."""
    if obj is None:
        return None
    value: str = _need(obj, str, where, "a string or null")
    if value not in FAILURES:
        raise _Bad(f"{where} must be one of {'|'.join(FAILURES)} or null, got {value!r}")
    return value


def _transfer(obj: Any, where: str) -> TransferEntry:
    _need(obj, dict, where, "an object")
    _keys(obj, ("role", "api", "bytes", "seconds", "gbps"), where)
    return TransferEntry(
        role=_need(obj["role"], str, f"{where}.role", "a string"),
        api=_need(obj["api"], str, f"{where}.api", "a string"),
        bytes=_need(obj["bytes"], int, f"{where}.bytes", "an integer"),
        seconds=float(_number(obj["seconds"], f"{where}.seconds") or 0),
        gbps=float(_number(obj["gbps"], f"{where}.gbps") or 0),
    )


def _summary(obj: Any, where: str, computed: ApiSummary | None) -> ApiSummary:
    """A summary entry; the gate fields (optional, newer than kvtest 0.1.0) come from ``computed``,
    the summary of the test's own transfers, when a file written before them lacks them."""
    _need(obj, dict, where, "an object")
    _keys(obj, ("count", "bytes", "seconds", "gbps"), where)
    p50 = _number(obj.get("p50_ms"), f"{where}.p50_ms", optional=True)
    p99 = _number(obj.get("p99_ms"), f"{where}.p99_ms", optional=True)
    total_gbps = float(_number(obj["gbps"], f"{where}.gbps") or 0)
    median = _number(obj.get("median_gbps"), f"{where}.median_gbps", optional=True)
    if "gateable" in obj:
        gateable: bool = _need(obj["gateable"], bool, f"{where}.gateable", "true or false")
        note = obj.get("gate_note")
        if note is not None:
            _need(note, str, f"{where}.gate_note", "a string or null")
    else:
        gateable = computed["gateable"] if computed else False
        note = computed["gate_note"] if computed else f"{TOO_SMALL}: no samples"
    if median is None:
        median = computed["median_gbps"] if computed else total_gbps
    return ApiSummary(
        count=_need(obj["count"], int, f"{where}.count", "an integer"),
        bytes=_need(obj["bytes"], int, f"{where}.bytes", "an integer"),
        seconds=float(_number(obj["seconds"], f"{where}.seconds") or 0),
        gbps=total_gbps,
        p50_ms=None if p50 is None else float(p50),
        p99_ms=None if p99 is None else float(p99),
        median_gbps=float(median),
        gateable=gateable,
        gate_note=note,
    )


def _test(obj: Any, where: str) -> TestEntry:
    _need(obj, dict, where, "an object")
    _keys(obj, ("outcome", "roles", "transfers", "summary"), where)
    roles = _need(obj["roles"], dict, f"{where}.roles", "an object")
    transfers = _need(obj["transfers"], list, f"{where}.transfers", "a list")
    summary = _need(obj["summary"], dict, f"{where}.summary", "an object")
    role_entries = {k: _role(v, f"{where}.roles[{k!r}]") for k, v in roles.items()}
    entries = [_transfer(t, f"{where}.transfers[{i}]") for i, t in enumerate(transfers)]
    computed = summarize(TransferRecord.from_json(t) for t in entries)
    return TestEntry(
        outcome=_outcome(obj["outcome"], f"{where}.outcome"),
        roles=role_entries,
        transfers=entries,
        summary={k: _summary(v, f"{where}.summary[{k!r}]", computed.get(k)) for k, v in summary.items()},
        known_issue=_known_issue(obj.get("known_issue"), f"{where}.known_issue"),
        cost=cost_of(role_entries, entries),  # derived, so recomputed (files before it have none)
        failure=_failure(obj.get("failure"), f"{where}.failure"),
        failure_cause=_optional_text(obj.get("failure_cause"), f"{where}.failure_cause"),
    )


def _optional_text(obj: Any, where: str) -> str | None:
    return None if obj is None else _need(obj, str, where, "a string or null")


def _known_issue(obj: Any, where: str) -> KnownIssueEntry | None:
    """Optional (files from before known issues were recorded lack it)."""
    if obj is None:
        return None
    _need(obj, dict, where, "an object or null")
    _keys(obj, ("id", "state"), where)
    return KnownIssueEntry(id=_need(obj["id"], str, f"{where}.id", "a string"),
                           state=_need(obj["state"], str, f"{where}.state", "a string"))


def _parse(doc: Any, path: Path) -> Results:
    if not isinstance(doc, dict) or "kvtest_results" not in doc:
        raise _Bad("not a kvtest results file (no top-level 'kvtest_results' key)")
    version = doc["kvtest_results"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        hint = "; upgrade kvtest" if isinstance(version, int) and version > SCHEMA_VERSION else ""
        raise _Bad(f"results schema version {_short(version)} is not supported "
                   f"(this kvtest {__version__} reads version {SCHEMA_VERSION}){hint}")
    _keys(doc, ("kvtest_version", "created", "run_id", "fingerprint", "tests"), "the file")
    fingerprint = _need(doc["fingerprint"], dict, "fingerprint", "an object")
    for k, v in fingerprint.items():
        _need(v, str, f"fingerprint[{k!r}]", "a string")
    tests = _need(doc["tests"], dict, "tests", "an object")
    return Results(
        path=path,
        kvtest_version=_need(doc["kvtest_version"], str, "kvtest_version", "a string"),
        created=_need(doc["created"], str, "created", "a string"),
        run_id=_need(doc["run_id"], str, "run_id", "a string"),
        fingerprint=dict(fingerprint),
        tests={k: _test(v, f"tests[{k!r}]") for k, v in tests.items()},
        roles=_roles(doc.get("roles")),
        stack_differences=_strings(doc.get("stack_differences", []), "stack_differences"),
    )


def _strings(obj: Any, where: str) -> tuple[str, ...]:
    items = _need(obj, list, where, "a list")
    return tuple(_need(d, str, f"{where}[{i}]", "a string") for i, d in enumerate(items))


def _roles(obj: Any) -> dict[str, RoleInfo]:
    """The optional top-level ``roles`` (files from kvtest 0.2.0 and before lack it)."""
    if obj is None:
        return {}
    _need(obj, dict, "roles", "an object")
    out: dict[str, RoleInfo] = {}
    for name, info in obj.items():
        where = f"roles[{name!r}]"
        _need(info, dict, where, "an object")
        _keys(info, ("host", "pid", "fingerprint"), where)
        fingerprint = _need(info["fingerprint"], dict, f"{where}.fingerprint", "an object")
        for k, v in fingerprint.items():
            _need(v, str, f"{where}.fingerprint[{k!r}]", "a string")
        out[name] = RoleInfo(host=_need(info["host"], str, f"{where}.host", "a string"),
                             pid=_need(info["pid"], int, f"{where}.pid", "an integer"),
                             fingerprint=dict(fingerprint))
    return out


def load_results(path: str | os.PathLike[str]) -> Results:
    """Read and validate a results file.

    :raises ResultsError: ``"<path>: <problem>"`` on one line: missing or unreadable file, not JSON,
        not a kvtest results file, an unsupported schema version, or a malformed entry.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ResultsError(f"{p}: is a directory, not a results file") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{p}: not JSON (not UTF-8 text)") from None
    except OSError as exc:
        raise ResultsError(f"{p}: cannot read ({exc.strerror or exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{p}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    try:
        return _parse(doc, p)
    except _Bad as exc:
        raise ResultsError(f"{p}: {exc}") from None
