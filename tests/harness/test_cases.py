from __future__ import annotations

import pytest

from kvtest.cases import PROFILE_REPEATS, BlocksCase, cases_for

SMOKE = BlocksCase("fp16", 2, 4, 256, (0,), (1,))
NIGHTLY = BlocksCase("fp16", 2, 4, 1 << 19, (0, 1), (2, 3), "1MiB")
CASES = {"smoke": [SMOKE], "nightly": [NIGHTLY]}


def test_each_case_repeats_as_its_own_profile_list_says():
    assert [c.repeats for c in cases_for(CASES, "smoke")] == [1]
    # a nightly run keeps the smoke cases one-shot (too small to gate anyway) and repeats its own
    nightly = cases_for(CASES, "nightly")
    assert [(c.label, c.repeats) for c in nightly] == [("", 1), ("1MiB", PROFILE_REPEATS["nightly"])]
    assert PROFILE_REPEATS["nightly"] >= 5 and PROFILE_REPEATS["stress"] >= 5  # gateable: >= 5 samples
    assert [str(c) for c in nightly] == [str(SMOKE), str(NIGHTLY)]  # test ids do not change


def test_unknown_profile_lists_are_refused():
    with pytest.raises(ValueError, match="unknown profile"):
        cases_for({"weekly": [SMOKE]}, "smoke")
