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


def test_npu_runs_a_push_blocks_case_whose_equal_layer_ranges_are_a_strict_middle():
    """push_blocks's layer ranges proven on npu: the unequal-range cases are skipped there (documented
    limit), so a smoke case with equal ranges starting above layer 0 and ending before the last one
    must exist (a push that ignored its ranges would write layers outside them)."""
    from pathlib import Path

    from loading import load_file

    path = Path(__file__).resolve().parents[2] / "tests" / "samples" / "test_switch_role.py"
    module = load_file(path, "switch_role_cases")
    middle = [
        case
        for case in module.CASES["smoke"]
        if case.src_layers == case.dst_layers and case.src_layers[0] > 0 and case.src_layers[1] < case.layers
    ]
    assert middle, "no switch_role smoke case pushes equal layer ranges strictly inside the cache"
