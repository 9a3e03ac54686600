from __future__ import annotations

import json
import os
import re

import pytest

from kvtest import __version__
from kvtest.results import results
from kvtest.results.metrics import TransferLog
from kvtest.results.report import api_text, cost_line, format_bytes, summary_lines
from kvtest.results.results import (
    ResultsError,
    ResultsWriter,
    cost_of,
    load_results,
    role_entry,
    transfer_records,
)

FINGERPRINT = {"backend": "sim", "cann": "absent", "torch": "2.13.0"}
PULL = "tests/samples/test_pull_blocks.py::test_pull_blocks[fp16]"
PUSH = "tests/samples/test_push_cache.py::test_push_cache[fp32]"


def _roles(d0="passed", step=None, message=None):
    return {"p0": role_entry("passed", duration_s=1.5),
            "d0": role_entry(d0, step=step, message=message, duration_s=2.0)}


def _log():
    log = TransferLog(role="d0")
    log.add("pull_blocks", 8 << 20, 0.004)
    log.add("pull_blocks", 8 << 20, 0.002)
    return log


def _writer(tmp_path):
    return ResultsWriter(tmp_path / "out" / "kv.json", run_id="run-1", fingerprint=FINGERPRINT)


def test_round_trip(tmp_path):
    writer = _writer(tmp_path)
    writer.add(PULL, "passed", _roles(), _log().records)
    writer.add(PUSH, "failed", _roles("failed", "push", "d0 failed at step 'push': boom"))
    loaded = load_results(writer.path)
    assert (loaded.kvtest_version, loaded.run_id, loaded.fingerprint) == (__version__, "run-1", FINGERPRINT)
    assert loaded.tests == writer.tests
    assert list(loaded.tests) == [PULL, PUSH]
    pull = loaded.tests[PULL]
    assert pull["roles"]["d0"] == {"outcome": "passed", "step": None, "message": None, "duration_s": 2.0,
                                  "failure": None, "phases": {}}
    assert pull["transfers"][0] == {"role": "d0", "api": "pull_blocks", "bytes": 8 << 20, "seconds": 0.004,
                                    "gbps": pytest.approx((8 << 20) / 0.004 / 1e9)}
    assert pull["summary"]["pull_blocks"]["count"] == 2
    assert pull["summary"]["pull_blocks"]["p50_ms"] == pytest.approx(3.0)
    assert transfer_records(pull) == _log().records
    assert loaded.tests[PUSH]["roles"]["d0"]["step"] == "push"
    assert loaded.tests[PUSH]["transfers"] == [] and loaded.tests[PUSH]["summary"] == {}


def test_file_is_valid_from_the_start_and_after_every_test(tmp_path):
    writer = _writer(tmp_path)
    assert load_results(writer.path).tests == {}
    writer.add(PULL, "passed", _roles(), _log().records)
    assert list(load_results(writer.path).tests) == [PULL]
    writer.add(PUSH, "skipped", {})
    assert list(load_results(writer.path).tests) == [PULL, PUSH]
    # a rerun replaces the earlier entry and moves it to the end
    writer.add(PULL, "failed", _roles("failed", "pull"))
    assert list(load_results(writer.path).tests) == [PUSH, PULL]
    assert load_results(writer.path).tests[PULL]["outcome"] == "failed"


def test_the_file_reads_as_json_writes_it_indented_through_every_change(tmp_path):
    """Each test's entry is serialized once and the file assembled from them: byte for byte what
    ``json.dumps(doc, indent=2)`` gives, after adds, a replaced entry and the roles, whatever the
    fingerprint holds (even text that looks like the tests' place in the file)."""
    odd = {**FINGERPRINT, "note": 'line\n  "tests": {}', "tests": "kvtest: the tests"}
    writer = ResultsWriter(tmp_path / "kv.json", run_id="run-1", fingerprint=odd)

    def same() -> None:
        text = writer.path.read_text()
        assert text == json.dumps(json.loads(text), indent=2) + "\n"

    same()
    writer.add(PULL, "passed", _roles(), _log().records)
    same()
    writer.add(PUSH, "failed", _roles("failed", "push", 'd0 failed at step "push":\n\tboom'))
    same()
    writer.add(PULL, "failed", _roles("failed", "pull"))  # replaced: moves to the end
    same()
    writer.set_roles({"p0": {"host": "a", "pid": 1, "fingerprint": {"x": "y"}}}, ["z"])
    same()
    assert list(load_results(writer.path).tests) == [PUSH, PULL]
    assert load_results(writer.path).fingerprint == odd


def test_rewrite_is_atomic(tmp_path, monkeypatch):
    writer = _writer(tmp_path)
    writer.add(PULL, "passed", _roles(), _log().records)
    before = writer.path.read_bytes()

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(results.os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        writer.add(PUSH, "passed", _roles())
    assert writer.path.read_bytes() == before
    assert os.listdir(writer.path.parent) == ["kv.json"]  # no temporary file left behind


def test_transfers_may_come_as_json_entries_from_peers(tmp_path):
    writer = _writer(tmp_path)
    entry = writer.add(PULL, "passed", _roles(),
                       [{"role": "p0", "api": "push_blocks", "bytes": 1000, "seconds": 0.001, "gbps": 99.0}])
    assert entry["transfers"][0]["gbps"] == pytest.approx(0.001)  # recomputed, not trusted
    assert entry["summary"]["push_blocks"]["bytes"] == 1000


def test_empty_step_and_message_mean_none():
    assert role_entry("passed", step="", message="") == {
        "outcome": "passed", "step": None, "message": None, "duration_s": 0.0, "failure": None,
            "phases": {}}


def test_bad_outcomes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="must be one of passed, failed, skipped, error, got 'xfail'"):
        role_entry("xfail")
    with pytest.raises(ValueError, match=re.escape(f"{PULL}: outcome must be one of")):
        _writer(tmp_path).add(PULL, "ok", {})


def _valid_doc(tmp_path):
    writer = _writer(tmp_path)
    writer.add(PULL, "passed", _roles(), _log().records)
    return json.loads(writer.path.read_text())


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("kvtest_results"), "not a kvtest results file (no top-level 'kvtest_results' key)"),
    (lambda d: d.update(kvtest_results=2),
     f"results schema version 2 is not supported (this kvtest {__version__} reads version 1); "
     "upgrade kvtest"),
    (lambda d: d.update(kvtest_results="1"), "results schema version \"1\" is not supported"),
    (lambda d: d.pop("run_id"), "the file lacks 'run_id'"),
    (lambda d: d.update(fingerprint={"cann": 8}), "fingerprint['cann'] must be a string, got 8"),
    (lambda d: d.update(tests=[]), "tests must be an object, got []"),
    (lambda d: d["tests"][PULL].update(outcome="weird"),
     f"tests['{PULL}'].outcome must be one of passed|failed|skipped|error, got 'weird'"),
    (lambda d: d["tests"][PULL]["roles"]["d0"].pop("step"), f"tests['{PULL}'].roles['d0'] lacks 'step'"),
    (lambda d: d["tests"][PULL]["transfers"][1].update(bytes="8M"),
     f"tests['{PULL}'].transfers[1].bytes must be an integer, got \"8M\""),
    (lambda d: d["tests"][PULL]["transfers"][0].update(seconds=-1.0),
     f"tests['{PULL}'].transfers[0].seconds must be a finite number >= 0, got -1.0"),
    (lambda d: d["tests"][PULL]["summary"]["pull_blocks"].update(count=True),
     f"tests['{PULL}'].summary['pull_blocks'].count must be an integer, got true"),
    (lambda d: d["tests"][PULL]["summary"]["pull_blocks"].update(gateable="yes"),
     f"tests['{PULL}'].summary['pull_blocks'].gateable must be true or false, got \"yes\""),
    (lambda d: d["tests"][PULL]["summary"]["pull_blocks"].update(gate_note=3),
     f"tests['{PULL}'].summary['pull_blocks'].gate_note must be a string or null, got 3"),
    (lambda d: d["tests"][PULL]["summary"]["pull_blocks"].update(median_gbps=-2),
     f"tests['{PULL}'].summary['pull_blocks'].median_gbps must be a finite number >= 0, got -2"),
])
def test_malformed_files_name_the_file_and_the_problem(tmp_path, change, message):
    doc = _valid_doc(tmp_path)
    change(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ResultsError) as info:
        load_results(bad)
    assert str(info.value).startswith(f"{bad}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    ("", "not JSON (Expecting value at line 1 column 1)"),
    ('{"kvtest_results": 1,', "not JSON (Expecting property name enclosed in double quotes at line 1"),
    (b"\xff\xfe\x00binary", "not JSON (not UTF-8 text)"),
    ("[1, 2, 3]", "not a kvtest results file"),
    ('{"testsuites": {}}', "not a kvtest results file"),
])
def test_unreadable_or_foreign_files(tmp_path, content, message):
    path = tmp_path / "r.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ResultsError, match="^" + re.escape(f"{path}: ")) as info:
        load_results(path)
    assert message in str(info.value)


def test_directory_is_not_a_results_file(tmp_path):
    with pytest.raises(ResultsError, match="is a directory, not a results file"):
        load_results(tmp_path)


def test_terminal_summary_lines(tmp_path):
    writer = _writer(tmp_path)
    writer.add(PULL, "passed", _roles(), _log().records)
    writer.add(PUSH, "failed", _roles("failed", "push", "boom"))
    writer.add("t.py::test_skip", "skipped", {"p0": role_entry("skipped"), "d0": role_entry("skipped")})
    lines = summary_lines(load_results(writer.path).tests)
    assert lines == [
        f"PASSED   {PULL}  p0 passed, d0 passed  16.0 MiB  pull_blocks 2.80 GB/s (2 calls, p50 3.00 ms, "
        "p99 3.98 ms)  in transfers 0.01 s, outside 1.99 s (332x)",
        f"FAILED   {PUSH}  p0 passed, d0 failed at 'push'  no transfers timed",
        "SKIPPED  t.py::test_skip  p0 skipped, d0 skipped  no transfers timed",
    ]
    assert summary_lines({}) == []
    assert cost_line(load_results(writer.path).tests) == (
        "kvtest: harness cost over 1 tests with transfers: in transfers 0.01 s, outside 1.99 s (332x)")
    assert cost_line({}) is None


@pytest.mark.parametrize(("transfers", "text"), [
    ([(160, 0.00031)], "push_blocks 160 B 0.31 ms"),  # small: latency, not 0.00 GB/s
    ([(160, 0.000042)], "push_blocks 160 B 0.042 ms"),
    ([(160, 0.0003), (160, 0.0005), (160, 0.0004)],
     "push_blocks 480 B in 3 calls (p50 0.40 ms, p99 0.50 ms)"),
    ([(8 << 20, 0.004)], "push_blocks 2.10 GB/s"),
    ([(1 << 20, 0.001), (1 << 20, 0.002)], "push_blocks 0.70 GB/s (2 calls, p50 1.50 ms, p99 1.99 ms)"),
])
def test_small_transfers_show_latency_and_repeats_show_percentiles(transfers, text):
    log = TransferLog(role="d0")
    for nbytes, seconds in transfers:
        log.add("push_blocks", nbytes, seconds)
    assert api_text("push_blocks", log.summary()["push_blocks"]) == text


def test_cost_is_the_slowest_role_beside_the_longest_time_in_transfers(tmp_path):
    roles = {"p0": role_entry("passed", duration_s=3.0), "d0": role_entry("passed", duration_s=2.5),
             "d1": role_entry("passed", duration_s=1.0)}
    transfers = [{"role": "d0", "seconds": 0.2}, {"role": "d0", "seconds": 0.3}, {"role": "d1", "seconds": 0.4}]
    assert cost_of(roles, transfers) == {"wall_s": 3.0, "transfer_s": 0.5, "other_s": 2.5}
    assert cost_of(roles, []) == {"wall_s": 3.0, "transfer_s": 0.0, "other_s": 3.0}
    assert cost_of({}, []) == {"wall_s": 0.0, "transfer_s": 0.0, "other_s": 0.0}
    # recomputed on load, so a file written before the field existed (or edited by hand) reads the same
    writer = _writer(tmp_path)
    writer.add(PULL, "passed", _roles(), _log().records)
    doc = json.loads(writer.path.read_text())
    assert doc["tests"][PULL]["cost"] == {"wall_s": 2.0, "transfer_s": pytest.approx(0.006),
                                          "other_s": pytest.approx(1.994)}
    del doc["tests"][PULL]["cost"]
    writer.path.write_text(json.dumps(doc))
    assert load_results(writer.path).tests[PULL]["cost"] == writer.tests[PULL]["cost"]


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                          (3 << 20, "3.0 MiB"), (5 << 40, "5120.0 GiB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_the_summary_marks_what_cannot_be_gated(tmp_path):
    writer = _writer(tmp_path)
    writer.add(PULL, "passed", _roles(), _log().records)  # two samples: too few to gate
    log = TransferLog(role="d0")
    for ms in (4.0, 4.2, 4.4, 4.6, 4.8):
        log.add("push_blocks", 8 << 20, ms / 1000)
    writer.add(PUSH, "passed", _roles(), log.records)
    doc = json.loads(writer.path.read_text())
    pull = doc["tests"][PULL]["summary"]["pull_blocks"]
    assert (pull["gateable"], pull["gate_note"]) == (False, "too small to gate: 2 samples (needs 5)")
    assert pull["median_gbps"] == pytest.approx((8 << 20) / 0.003 / 1e9 * 1.125, rel=0.01)
    push = doc["tests"][PUSH]["summary"]["push_blocks"]
    assert (push["gateable"], push["gate_note"]) == (True, None)
    assert load_results(writer.path).tests == writer.tests


def test_a_file_from_before_the_gate_fields_still_loads(tmp_path):
    """Schema 1 stays 1: the gate fields are optional and computed from the transfers when absent."""
    writer = _writer(tmp_path)
    writer.add(PULL, "passed", _roles(), _log().records)
    doc = json.loads(writer.path.read_text())
    for key in ("median_gbps", "gateable", "gate_note"):
        del doc["tests"][PULL]["summary"]["pull_blocks"][key]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    assert load_results(old).tests == writer.tests
