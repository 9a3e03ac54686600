"""Environment vs product, end to end: real runs with a fault injected, read back from the three places
a nightly job reads (the results file, the JUnit XML, ``kvtest compare`` against a clean baseline).

- a peer that never joins: every test errors at setup as ``environment``, exit 1, no traceback;
- a device error inside a test on d0 (what ``hccn_tool`` failing raises on npu): ``environment``,
  carried from d0 to p0 through the store; p0's own failure is secondary and takes that class;
- a flipped byte (``KVTEST_SIM_FAULT=flip``): still ``product``, and a regression in compare.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PAIR = """
import os

from kvtest.host.devices import DeviceError


def test_pair(kv):
    kv.step("exchange")
    kv.publish("hello", kv.me)
    for peer in kv.peers:
        assert kv.fetch(peer, "hello") == peer
    kv.barrier("end")


def test_device_ip(kv):
    kv.step("rank table")
    if kv.me == "d0" and os.path.exists(os.path.join(os.environ["PAIR_DIR"], "break-the-device")):
        raise DeviceError("hccn_tool -i 0 -ip -g failed (exit 1): no such device: check the driver")
    kv.barrier("end")
"""
TEST_PAIR = "test_pair.py::test_pair"
TEST_DEVICE = "test_pair.py::test_device_ip"


def run(cwd: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KVTEST_SIM_FAULT"}
    env["PAIR_DIR"] = str(cwd)
    if fault is not None:
        env["KVTEST_SIM_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=cwd, capture_output=True, text=True, timeout=240, env=env,
    )


def compare(baseline: Path, current: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvtest.cli", "compare", str(baseline), str(current)],
        capture_output=True, text=True, timeout=120,
    )


def junit_properties(path: Path) -> dict[str, dict[str, str]]:
    """test name -> its properties (each test's ``<properties>`` in the JUnit XML)."""
    found: dict[str, dict[str, str]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        found[case.get("name", "")] = props
    return found


def results(path: Path) -> dict[str, dict]:
    return json.loads(path.read_text())["tests"]


@pytest.fixture
def pair(tmp_path: Path) -> Path:
    (tmp_path / "test_pair.py").write_text(PAIR)
    return tmp_path


@pytest.fixture
def clean_baseline(pair: Path) -> Path:
    """A local-mode run (p0 and d0) where every test passes."""
    base = pair / "base.json"
    done = run(pair, "--kv-results", str(base), "--kv-logs", str(pair / "logs-base"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert {k: v["outcome"] for k, v in results(base).items()} == {TEST_PAIR: "passed", TEST_DEVICE: "passed"}
    return base


@pytest.mark.full
def test_a_peer_that_never_joins_is_an_environment_failure(pair: Path, clean_baseline: Path, port: int):
    rdv = f"tcp://127.0.0.1:{port}"
    cur, junit = pair / "cur.json", pair / "cur.xml"
    done = run(pair, "--role", "p", "--topology", "1p1d", "--rendezvous", rdv, "--kv-join-timeout", "3",
               "--kv-results", str(cur), f"--junitxml={junit}")
    out = done.stdout + done.stderr
    cause = f"d0 never joined within 3s at {rdv}"
    # not a usage error (4): the run ran, and its tests errored
    assert done.returncode == 1, out
    assert "Traceback" not in out and "INTERNALERROR" not in out, out
    assert f"kvtest: {cause}: every test that needs it errors at setup (an environment failure)" in out
    assert f"kvtest: 2 environment failures (not the product): {cause} (2 tests)" in out
    assert "2 errors" in out

    tests = results(cur)
    for nodeid in (TEST_PAIR, TEST_DEVICE):
        entry = tests[nodeid]
        assert (entry["outcome"], entry["failure"], entry["failure_cause"]) == ("error", "environment", cause)
        assert entry["roles"]["d0"] == {"outcome": "failed", "step": "join", "message": cause,
                                        "duration_s": 0.0, "failure": "environment",
                                        "phases": {}}
        assert entry["roles"]["p0"]["failure"] == "environment"

    props = junit_properties(junit)
    assert props["test_pair"] == props["test_device_ip"] == {"kv.failure": "environment",
                                                            "kv.failure.cause": cause}

    compared = compare(clean_baseline, cur)
    assert compared.returncode == 3, compared.stdout + compared.stderr
    assert "environment failures (not regressions, not gated): 2" in compared.stdout
    assert f"  {TEST_PAIR}: {cause}" in compared.stdout
    assert "result: no regression" in compared.stdout
    assert "Traceback" not in compared.stdout + compared.stderr


def test_a_device_error_on_d0_is_the_environments(pair: Path, clean_baseline: Path):
    (pair / "break-the-device").touch()
    cur, junit = pair / "cur.json", pair / "cur.xml"
    done = run(pair, "--kv-results", str(cur), f"--junitxml={junit}", "--kv-logs", str(pair / "logs"))
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    cause = "d0 failed at step 'rank table': kvtest.host.devices.DeviceError: hccn_tool -i 0 -ip -g failed"
    entry = results(cur)[TEST_DEVICE]
    assert entry["outcome"] == "failed" and entry["failure"] == "environment", entry
    assert entry["failure_cause"].startswith(cause), entry["failure_cause"]
    assert entry["roles"]["d0"]["failure"] == "environment"
    assert entry["roles"]["p0"]["failure"] == "environment"  # p0 failed only because d0 did
    assert results(cur)[TEST_PAIR]["failure"] is None
    assert junit_properties(junit)["test_device_ip"]["kv.failure"] == "environment"
    assert "kvtest: 1 environment failure (not the product): " + cause in out

    compared = compare(clean_baseline, cur)
    assert compared.returncode == 3, compared.stdout
    assert f"  {TEST_DEVICE}: {cause}" in compared.stdout


@pytest.mark.full
def test_a_flipped_byte_is_still_the_products(tmp_path: Path):
    sample = ["tests/samples/test_push_blocks.py", "-k", "fp32", "--kv-logs", str(tmp_path / "logs")]
    base, cur, junit = tmp_path / "base.json", tmp_path / "cur.json", tmp_path / "cur.xml"
    clean = run(ROOT, *sample, "--kv-results", str(base))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    done = run(ROOT, *sample, "--kv-results", str(cur), f"--junitxml={junit}", fault="flip@push_blocks:d0")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    (nodeid, entry), = results(cur).items()
    assert entry["outcome"] == "failed" and entry["failure"] == "product", entry
    assert "KV mismatch in p0 cache after push_blocks" in entry["failure_cause"]
    assert entry["roles"]["p0"]["failure"] == "product" and entry["roles"]["d0"]["failure"] is None
    (props,) = junit_properties(junit).values()
    assert props["kv.failure"] == "product"
    assert "environment failure" not in out

    compared = compare(base, cur)
    assert compared.returncode == 1, compared.stdout
    assert f"result: 1 regression(s): FAILED {nodeid}" in compared.stdout
    assert "environment failures" not in compared.stdout
