"""``--kv-sync-kv-timeout``: the sync_kv_timeout of every LLMDataDist the ``datadist`` fixture makes, on
every role (the local children get it from p0), unless the test passes its own."""

from __future__ import annotations

import pytest

SUITE = """
import pytest

EXPECTED = {expected}


@pytest.mark.kv(topology="1p1d")
@pytest.mark.parametrize("own", [None, 700])
def test_timeout(kv, datadist, own):
    node = datadist({{"p": 0, "d": 1}}[kv.role], sync_kv_timeout_ms=own)
    # the sim's LLMDataDist keeps what llm.SyncKvCacheWaitTime said (its default when absent)
    assert node.dd._sync_timeout_ms == (own or EXPECTED), kv.me
"""


@pytest.mark.parametrize(("args", "expected"), [((), 1000), (("--kv-sync-kv-timeout", "4321"), 4321)],
                         ids=["package-default", "given"])
def test_every_role_gets_the_timeout_and_a_test_keeps_its_own(pytester: pytest.Pytester, args, expected):
    pytester.makepyfile(test_timeouts=SUITE.format(expected=expected))
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--backend", "sim", *args)
    result.assert_outcomes(passed=2)


def test_the_environment_sets_it_too(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    pytester.makepyfile(test_timeouts=SUITE.format(expected=2500))
    monkeypatch.setenv("KVTEST_SYNC_KV_TIMEOUT", "2500")
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--backend", "sim", "-k", "None")
    result.assert_outcomes(passed=1)
