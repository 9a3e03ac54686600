"""A folder of synthetic nights built from the results of a real run, for the report's tests and
benchmark (``kvtest report``).

Every night keeps the real run's tests, roles, messages and fingerprint; its transfers become
gateable (6 samples of 8 MiB per real transfer, at the API's real GB/s with a few percent of seeded
noise) so the gate has something to decide. The story, for ``count`` nights (the newest last):

- a third of the way: CANN 8.2.RC1 -> 8.3.RC1 and driver 23.0.3 -> 24.1.0 (no change in speed);
- the night at ENVIRONMENT_AT: three tests fail because d0 never joined (``environment``);
- two thirds of the way: CANN 8.5.0; the known issue the real run hit is fixed (strict XPASS);
- the newest night: ``pull_blocks`` 30 % slower (a DROP) and one test fails on d0 (``product``).
"""

from __future__ import annotations

import copy
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from kvtest.results.metrics import TransferRecord, summarize
from kvtest.results.results import cost_of

REAL = Path(__file__).resolve().parent / "data" / "sim-smoke-results.json"
SLOW_API = "pull_blocks"
SLOWDOWN = 0.7
FAILING_STEP = "pull_blocks"
FAILING_MESSAGE = "LLMException: pull_blocks failed, status code LLM_LINK_BUSY"
ENVIRONMENT_CAUSE = "d0 never joined within 120s at tcp://10.0.0.1:29500"
SAMPLE_BYTES = 8 << 20


def _api_gbps(doc: dict[str, Any]) -> dict[str, float]:
    totals: dict[str, list[float]] = {}
    for entry in doc["tests"].values():
        for t in entry["transfers"]:
            pair = totals.setdefault(t["api"], [0.0, 0.0])
            pair[0] += t["bytes"]
            pair[1] += t["seconds"]
    # the smoke profile's KiB transfers are slow per byte; keep their order but in a GB/s range
    return {api: max(0.5, min(20.0, b / s / 1e9 * 1e3)) for api, (b, s) in totals.items() if s > 0}


def _passed(entry: dict[str, Any]) -> None:
    entry.update(outcome="passed", failure=None, failure_cause=None)
    for role in entry["roles"].values():
        role.update(outcome="passed", step=None, message=None, failure=None)


def _fail(entry: dict[str, Any], *, failure: str, cause: str, step: str, message: str) -> None:
    entry.update(outcome="failed", failure=failure, failure_cause=cause, known_issue=None)
    for name, role in entry["roles"].items():
        if name == "d0":
            role.update(outcome="failed", step=step, message=message, failure=failure)


def night_doc(real: dict[str, Any], index: int, count: int, rng: random.Random) -> dict[str, Any]:
    """Night ``index`` of ``count`` (0 is the oldest) as a results document."""
    doc = copy.deepcopy(real)
    start = datetime(2026, 8, 1, 18, tzinfo=timezone.utc)
    doc["created"] = (start + timedelta(days=index)).isoformat(timespec="seconds")
    doc["run_id"] = f"nightly-{index:03d}"
    fp = doc["fingerprint"]
    fp.update(backend="npu", cann="8.2.RC1", driver="23.0.3", firmware="7.1.0.5.220")
    if index >= count // 3:
        fp.update(cann="8.3.RC1", driver="24.1.0")
    if index >= 2 * count // 3:
        fp.update(cann="8.5.0")
    for role in doc.get("roles", {}).values():
        role["fingerprint"] = dict(fp)
    gbps = _api_gbps(real)
    newest = index == count - 1
    names = list(doc["tests"])
    for n, (nodeid, entry) in enumerate(doc["tests"].items()):
        known = entry.get("known_issue")
        if known is None:
            _passed(entry)
        elif index >= 2 * count // 3:  # the CANN release that fixed it: the test passes, strictly
            _fail(entry, failure="product", cause=f"[XPASS(strict)] known upstream issue {known['id']}: fixed "
                  "upstream: drop the entry", step="call", message="[XPASS(strict)]")
            entry["known_issue"] = {"id": known["id"], "state": "fixed"}
        records = []
        for t in entry["transfers"]:
            speed = gbps[t["api"]] * rng.gauss(1.0, 0.02) * (SLOWDOWN if newest and t["api"] == SLOW_API else 1)
            for _ in range(6):
                sample = speed * rng.gauss(1.0, 0.02)
                records.append(TransferRecord(t["api"], SAMPLE_BYTES, SAMPLE_BYTES / sample / 1e9, t["role"]))
        entry["transfers"] = [r.to_json() for r in records]
        entry["summary"] = summarize(records)
        entry["cost"] = cost_of(entry["roles"], entry["transfers"])
        if index == count // 4 and n < 3:
            _fail(entry, failure="environment", cause=ENVIRONMENT_CAUSE, step="join", message=ENVIRONMENT_CAUSE)
        if newest and nodeid == failing_test(names):
            _fail(entry, failure="product", cause=f"d0 failed at step {FAILING_STEP!r}: {FAILING_MESSAGE}",
                  step=FAILING_STEP, message=FAILING_MESSAGE)
    return doc


def failing_test(names: list[str]) -> str:
    """The test that fails on the newest night: the first one that pulls blocks."""
    return next(n for n in names if "pull_blocks" in n)


def make_nights(folder: Path, count: int = 100, *, real: Path = REAL, seed: int = 7) -> list[Path]:
    """Write ``count`` nights into ``folder`` (``night-000.json`` ...); the paths, oldest first."""
    base = json.loads(real.read_text())
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"night-{i:03d}.json"
        path.write_text(json.dumps(night_doc(base, i, count, rng), indent=1))
        paths.append(path)
    return paths
