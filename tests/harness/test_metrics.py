from __future__ import annotations

import math

import pytest

from kvtest.results.metrics import TransferLog, TransferRecord, gbps, summarize


def test_measure_records_bytes_seconds_and_role():
    log = TransferLog(role="d0")
    with log.measure("pull_blocks", 8 << 20):
        pass
    (record,) = log.records
    assert (record.api, record.nbytes, record.role) == ("pull_blocks", 8 << 20, "d0")
    assert 0 <= record.seconds < 1
    assert math.isfinite(record.gbps) and record.gbps > 0


def test_a_transfer_that_raises_is_not_recorded():
    log = TransferLog()
    with pytest.raises(RuntimeError, match="link down"), log.measure("push_blocks", 100):
        raise RuntimeError("link down")
    assert log.records == []


def test_gbps_is_decimal_and_never_divides_by_zero():
    assert gbps(2_000_000_000, 0.5) == 4.0
    assert TransferRecord("x", 1_000_000_000, 2.0).gbps == 0.5
    assert math.isfinite(gbps(1024, 0.0))


def test_summary_per_api_with_percentiles_when_repeated():
    log = TransferLog(role="d0")
    for ms in range(1, 101):  # 1..100 ms, 1 GB each
        log.add("pull_blocks", 1_000_000_000, ms / 1000)
    log.add("push_cache", 500_000_000, 0.25)
    summary = log.summary()
    assert list(summary) == ["pull_blocks", "push_cache"]
    pull = summary["pull_blocks"]
    assert pull["count"] == 100 and pull["bytes"] == 100_000_000_000
    assert pull["seconds"] == pytest.approx(5.05)
    assert pull["gbps"] == pytest.approx(100 / 5.05)
    assert pull["p50_ms"] == pytest.approx(50.5)
    assert pull["p99_ms"] == pytest.approx(99.01)
    push = summary["push_cache"]
    assert (push["count"], push["gbps"], push["p50_ms"], push["p99_ms"]) == (1, 2.0, None, None)
    assert summarize([]) == {}


def test_as_properties_names_are_stable():
    log = TransferLog()
    log.add("pull_blocks", 4_000_000, 0.001)
    log.add("pull_blocks", 4_000_000, 0.003)
    log.add("push_blocks", 1_000, 0.000_001)
    props = dict(log.as_properties())
    assert list(props) == [
        "kv.pull_blocks.count", "kv.pull_blocks.bytes", "kv.pull_blocks.seconds", "kv.pull_blocks.gbps",
        "kv.pull_blocks.p50_ms", "kv.pull_blocks.p99_ms",
        "kv.push_blocks.count", "kv.push_blocks.bytes", "kv.push_blocks.seconds", "kv.push_blocks.gbps",
    ]
    assert props["kv.pull_blocks.bytes"] == 8_000_000
    assert props["kv.pull_blocks.gbps"] == 2.0
    assert props["kv.pull_blocks.p50_ms"] == 2.0
    assert props["kv.push_blocks.gbps"] == 1.0
    assert [name for name, _ in log.as_properties(prefix="kvx")][0] == "kvx.pull_blocks.count"


def test_negative_figures_are_refused():
    message = r"pull_blocks: bytes and seconds must not be negative \(got -1, 0\.1\)"
    with pytest.raises(ValueError, match=message):
        TransferLog().add("pull_blocks", -1, 0.1)


def test_records_travel_as_json():
    record = TransferRecord("pull_blocks", 4_000_000, 0.002, role="d1")
    entry = record.to_json()
    assert entry == {"role": "d1", "api": "pull_blocks", "bytes": 4_000_000, "seconds": 0.002, "gbps": 2.0}
    assert TransferRecord.from_json({**entry, "gbps": 123.0}) == record
    assert TransferRecord.from_json({"api": "x", "bytes": 1, "seconds": 1}).role == ""
