"""The thread budget: each local role process gets its share of the cores, and says so."""

from __future__ import annotations

import re

import pytest

from kvtest.run.threads import THREAD_ENV, ThreadBudget, child_env, plan, usable_cores
from kvtest.settings import resolve

REPORT_THREADS = """
import os
import torch

def test_threads(kv):
    kv.publish("threads", [torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")])
    seen = {peer: kv.fetch(peer, "threads") for peer in kv.peers}
    seen[kv.me] = [torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")]
    print("THREADS", sorted(seen.items()))
    kv.barrier("end")
"""


@pytest.mark.parametrize(
    ("threads", "env", "processes", "cores", "expected", "why"),
    [
        (None, {}, 2, 2, 1, "2 cores / 2 processes on this host"),
        (None, {}, 4, 16, 4, "16 cores / 4 processes on this host"),
        (None, {"PYTEST_XDIST_WORKER_COUNT": "2"}, 4, 16, 2, "16 cores / 4 processes x 2 xdist workers"),
        (None, {}, 16, 2, 1, "2 cores / 16 processes"),  # never below one
        (None, {"OMP_NUM_THREADS": "3"}, 2, 16, 3, "OMP_NUM_THREADS=3 in the environment"),
        (5, {"OMP_NUM_THREADS": "3"}, 2, 16, 5, "--kv-threads 5 from the command line"),
        (None, {}, None, 16, None, "a role started by hand"),
    ],
)
def test_plan(threads, env, processes, cores, expected, why):
    budget = plan(threads, "the command line (--kv-threads)", processes=processes, env=env, cores=cores)
    assert budget.threads == expected
    assert why in budget.why and why in budget.describe()


def test_child_env_sizes_every_pool_and_keeps_the_rest():
    env = child_env({"PATH": "/bin", "OMP_NUM_THREADS": "8"}, ThreadBudget(2, "x"))
    assert env["PATH"] == "/bin" and all(env[name] == "2" for name in THREAD_ENV)
    assert child_env({"PATH": "/bin"}, ThreadBudget(None, "x")) == {"PATH": "/bin"}


@pytest.mark.parametrize(("raw", "expected"), [("auto", None), (" AUTO ", None), ("1", 1), ("64", 64)])
def test_threads_option(raw, expected):
    assert resolve({"threads": raw}, {}, {}).threads == expected
    assert resolve({}, {"KVTEST_THREADS": raw}, {}).threads == expected
    assert resolve({}, {}, {"kv_threads": raw}).threads == expected


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5", "2000"])
def test_bad_thread_count_is_one_line_naming_value_source_and_fix(raw):
    with pytest.raises(pytest.UsageError) as info:
        resolve({}, {"KVTEST_THREADS": raw}, {})
    text = str(info.value)
    assert text == (f"kvtest: {raw!r} from the environment (KVTEST_THREADS) is invalid: threads per process "
                    "must be auto or a whole number from 1 to 1024; e.g. --kv-threads 2, or auto for a "
                    "share of the cores")


def _threads_seen(stdout: str) -> str:
    found = re.search(r"THREADS \[.*\]", stdout)
    assert found, stdout
    return found.group(0)


@pytest.mark.full
def test_local_roles_get_the_given_thread_count(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    pytester.makepyfile(test_threads=REPORT_THREADS)
    result = pytester.runpytest_subprocess("--kv-threads", "3", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["kvtest: torch threads: 3 per process (--kv-threads 3 from the command line (--kv-threads))"])
    # p0 sizes its own torch; d0 gets the figure on its command line and OpenMP's in its environment
    assert _threads_seen(result.stdout.str()) == "THREADS [('d0', [3, '3']), ('p0', [3, None])]"


@pytest.mark.full
def test_local_roles_share_the_cores_by_default(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("KVTEST_THREADS", raising=False)
    pytester.makepyfile(test_threads=REPORT_THREADS)
    result = pytester.runpytest_subprocess("-s")
    result.assert_outcomes(passed=1)
    share = max(1, usable_cores() // 2)
    result.stdout.fnmatch_lines(
        [f"kvtest: torch threads: {share} per process ({usable_cores()} cores / 2 processes on this host; "
         "--kv-threads to change)"])
    assert _threads_seen(result.stdout.str()) == f"THREADS [('d0', [{share}, '{share}']), ('p0', [{share}, None])]"
