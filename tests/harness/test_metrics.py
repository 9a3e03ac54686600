from __future__ import annotations

import math

import pytest

from kvtest.results.metrics import (
    GATE_MIN_BYTES,
    GATE_MIN_SAMPLES,
    GATE_MIN_SECONDS,
    TOO_SMALL,
    TransferLog,
    TransferRecord,
    gate_note,
    gbps,
    sample_gbps,
    summarize,
)


def test_measure_records_bytes_seconds_and_role():
    log = TransferLog(role="d0")
    with log.measure("pull_blocks", 8 << 20):
        pass
    (record,) = log.records
    assert (record.api, record.nbytes, record.role) == ("pull_blocks", 8 << 20, "d0")
    assert 0 <= record.seconds and math.isfinite(record.seconds)
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


def _repeated(n: int, nbytes: int, seconds: float) -> list[TransferRecord]:
    return [TransferRecord("pull_blocks", nbytes, seconds * (1 + i / 100)) for i in range(n)]


def test_gateable_needs_samples_bytes_and_time():
    assert gate_note(_repeated(GATE_MIN_SAMPLES, GATE_MIN_BYTES, GATE_MIN_SECONDS)) is None
    assert gate_note(_repeated(1, 4096, 2e-5)) == (
        f"{TOO_SMALL}: 1 sample (needs 5), 4.0 KiB a sample (needs 1.0 MiB), 0.02 ms a sample (needs 1 ms)"
    )
    assert gate_note(_repeated(4, 8 << 20, 0.01)) == f"{TOO_SMALL}: 4 samples (needs 5)"
    assert gate_note(_repeated(10, (1 << 20) - 1, 0.01)) == f"{TOO_SMALL}: 1024.0 KiB a sample (needs 1.0 MiB)"
    assert gate_note(_repeated(10, 8 << 20, 0.0009)) == f"{TOO_SMALL}: 0.94 ms a sample (needs 1 ms)"
    assert gate_note([]) == f"{TOO_SMALL}: no samples"


def test_summary_keeps_the_sample_median_and_the_gate():
    log = TransferLog()
    for seconds in (0.002, 0.004, 0.008, 0.004, 0.004):
        log.add("pull_blocks", 8_000_000, seconds)
    log.add("swap_blocks", 8_000_000, 0.002)
    summary = log.summary()
    pull = summary["pull_blocks"]
    assert pull["median_gbps"] == pytest.approx(2.0)  # per-sample GB/s 4, 2, 1, 2, 2
    assert pull["gbps"] == pytest.approx(40_000_000 / 0.022 / 1e9)  # total bytes over total time
    assert (pull["gateable"], pull["gate_note"]) == (True, None)
    swap = summary["swap_blocks"]
    assert (swap["gateable"], swap["gate_note"]) == (False, f"{TOO_SMALL}: 1 sample (needs 5)")
    assert sample_gbps(log.records)[:2] == [pytest.approx(4.0), pytest.approx(2.0)]
