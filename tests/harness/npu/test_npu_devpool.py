"""The device pool: distinct claims across processes, crash release, deadlines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kvtest.host.devpool import DevicePool, DevicePoolError, default_pool_dir

ROOT = Path(__file__).resolve().parents[3]

HOLDER = textwrap.dedent(
    """
    import sys, time
    from kvtest.host.devpool import DevicePool
    claim = DevicePool([0, 1], sys.argv[1]).claim(timeout=5)
    print(claim.device_id, flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def holder(tmp_path):
    """Start another process that claims one device of [0, 1] and holds it; yields (proc, device_id)."""
    procs = []

    def start() -> tuple[subprocess.Popen[str], int]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(tmp_path / "pool")], stdout=subprocess.PIPE, text=True, env=env
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip(), "holder process did not claim a device"
        return proc, int(line)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_claims_are_distinct_in_one_process(tmp_path):
    pool = DevicePool([0, 1], tmp_path)
    first, second = pool.claim(timeout=0), pool.claim(timeout=0)
    assert {first.device_id, second.device_id} == {0, 1}
    with pytest.raises(
        DevicePoolError, match=r"no free NPU among \[0, 1\] after 0.2s \(npu 0: pid \d+ on .*\)"
    ):
        pool.claim(timeout=0.2)
    first.release()
    first.release()  # twice is harmless
    with pool.claim(timeout=0) as again:
        assert again.device_id == first.device_id
    assert not again.held


def test_two_processes_never_share_a_device(tmp_path, holder):
    proc, taken = holder()
    pool = DevicePool([0, 1], tmp_path / "pool")
    mine = pool.claim(timeout=2)
    assert mine.device_id != taken
    with pytest.raises(DevicePoolError, match=rf"npu {taken}: pid {proc.pid} on "):
        pool.claim(timeout=0.2, prefer=[taken])
    mine.release()


def test_killed_holder_releases_its_claim(tmp_path, holder):
    proc, taken = holder()
    pool = DevicePool([taken], tmp_path / "pool")
    with pytest.raises(DevicePoolError, match=rf"no free NPU among \[{taken}\]"):
        pool.claim(timeout=0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    start = time.monotonic()
    claim = pool.claim(timeout=5)
    assert claim.device_id == taken
    assert time.monotonic() - start < 2
    claim.release()


def test_waiting_claim_gets_a_device_freed_before_its_deadline(tmp_path):
    pool = DevicePool([3], tmp_path)
    held = pool.claim(timeout=0)
    import threading

    timer = threading.Timer(0.3, held.release)
    timer.start()
    try:
        assert pool.claim(timeout=5).device_id == 3
    finally:
        timer.cancel()


def test_prefer_goes_first(tmp_path):
    pool = DevicePool([0, 1, 2], tmp_path)
    assert pool.claim(prefer=[2]).device_id == 2
    with pytest.raises(DevicePoolError, match=r"preferred NPU \[7\] not in the pool \[0, 1, 2\]"):
        pool.claim(prefer=[7])


def test_claim_many_is_all_or_none(tmp_path):
    pool = DevicePool([0, 1, 2], tmp_path)
    blocker = pool.claim(prefer=[1])
    pair = pool.claim_many(2, timeout=0)
    assert sorted(c.device_id for c in pair) == [0, 2]
    with pytest.raises(DevicePoolError, match=r"no free NPU"):
        pool.claim_many(1, timeout=0.1)
    for claim in pair:
        claim.release()
    with pytest.raises(DevicePoolError, match=r"no free NPU"):
        pool.claim_many(3, timeout=0.1)
    assert sorted(pool.free()) == [0, 2]  # the failed claim_many kept nothing
    blocker.release()
    with pytest.raises(DevicePoolError, match=r"4 NPUs needed but the pool has 3 \(\[0, 1, 2\]\)"):
        pool.claim_many(4)


def test_empty_pool(tmp_path):
    with pytest.raises(
        DevicePoolError, match=r"no NPU to claim: the pool is empty \(no /dev/davinciN visible\)"
    ):
        DevicePool([], tmp_path).claim()


def test_pool_dir_is_configurable(tmp_path, monkeypatch):
    monkeypatch.setenv("KVTEST_DEVICE_POOL_DIR", str(tmp_path / "locks"))
    assert default_pool_dir() == tmp_path / "locks"
    with DevicePool([5]).claim() as claim:
        assert (tmp_path / "locks" / "npu-5.lock").exists()
        assert claim.held
