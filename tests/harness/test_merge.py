"""The leader's merging of every role's outcome, and the handshake's comparison, as pure functions."""

from __future__ import annotations

import dataclasses

import pytest

from kvtest.roles.topology import Topology
from kvtest.run.merge import MergedRepr, fold, merge_results
from kvtest.run.messages import Hello, RoleResult, compare_hello

OK = RoleResult("p0", "passed", "check")


def failed(role: str, message: str, step: str = "push", **kw) -> RoleResult:
    return RoleResult(role, "failed", step, message, **kw)


def test_nothing_to_merge_when_every_role_passed():
    assert merge_results([RoleResult("d0", "passed")]) is None
    assert fold("p0", OK, "passed", [RoleResult("d0", "passed")]) is None


def test_a_peer_failure_fails_a_passing_leader():
    folded = fold("p0", OK, "passed", [failed("d0", "KV mismatch in d0", details="Traceback\nboom")])
    assert folded is not None and folded.outcome == "failed"
    assert folded.headline == "d0 failed at step 'push': KV mismatch in d0"
    assert not folded.own_first and not folded.show_own
    assert folded.peers_text.splitlines()[:3] == ["d0 failed at step 'push': KV mismatch in d0", "", "---- d0 ----"]


def test_the_leaders_own_primary_failure_comes_first():
    own = failed("p0", "assert 1 == 2", step="check")
    folded = fold("p0", own, "failed", [failed("d0", "p0 failed", secondary=True)])
    assert folded is not None and folded.own_first and folded.show_own
    assert folded.headline == "p0 failed at step 'check': assert 1 == 2"


def test_a_secondary_leader_failure_is_one_line_unless_the_peer_text_says_it():
    own = failed("p0", "peer d0 failed", secondary=True)
    peers = [failed("d0", "LLMException: LLM_TIMEOUT")]
    folded = fold("p0", own, "failed", peers)
    assert folded is not None and folded.headline.startswith("d0 failed") and folded.show_own
    assert folded.own_line == "p0: peer d0 failed"
    echoed = fold("p0", failed("p0", "LLM_TIMEOUT", secondary=True), "failed", peers)
    assert echoed is not None and not echoed.show_own


def test_a_skipped_peer_skips_a_passing_leader_only():
    peers = [RoleResult("d0", "skipped", "", "needs two devices")]
    folded = fold("p0", OK, "passed", peers)
    assert folded is not None and (folded.outcome, folded.headline) == ("skipped", "d0: needs two devices")
    assert fold("p0", OK, "skipped", peers) is None


def test_primary_failures_first_and_long_details_cut():
    results = [failed("d1", "d0 died", secondary=True), failed("d0", "boom", details="\n".join(map(str, range(50))))]
    text = merge_results(results, max_detail_lines=5)
    assert text is not None
    lines = text.splitlines()
    assert lines[0].startswith("d0 failed") and lines[1].startswith("d1 failed")
    assert "... (45 lines above cut)" in lines and lines[-1] == "49"


def test_merged_repr_orders_its_parts_by_who_failed_first():
    assert str(MergedRepr("h", "f.py", 3, "own text", "peers text", True)) == "own text\n\npeers text"
    assert str(MergedRepr("h", "f.py", 3, "own text", "peers text", False)) == "peers text\n\nown text"
    assert str(MergedRepr("h", "f.py", 3, None, "peers text", False)) == "peers text"
    assert MergedRepr("h", "f.py", 3, None, "", False).reprcrash.message == "h"


HELLO = Hello.make("p0", "sim", Topology(1, 1), 7, "smoke", ["t.py::a", "t.py::b"])


@pytest.mark.parametrize(
    "change, expected",
    [
        ({}, []),
        ({"backend": "npu"}, ["backend 'sim' on p0 but 'npu' on d0"]),
        ({"seed": 8}, ["seed 7 on p0 but 8 on d0"]),
        (
            {"nodeids": ("t.py::a", "t.py::c"), "digest": "other"},
            ["collected tests differ: 1 only on p0 (t.py::b); 1 only on d0 (t.py::c)"],
        ),
    ],
)
def test_compare_hello_lists_each_difference(change, expected):
    other = dataclasses.replace(HELLO, role="d0", **change)
    assert compare_hello(HELLO, other) == expected


def test_child_arguments_carry_selection_and_settings(pytester):
    """A local child collects what p0 collected, with p0's resolved settings on its command line."""
    from kvtest.run.launcher import child_arguments
    from kvtest.state import settings_of

    pytester.makepyfile(test_a="def test_a(): pass")
    config = pytester.parseconfigure("-k", "a", "-v", "--kv-seed", "9", "--backend", "sim", "test_a.py")
    args = child_arguments(config, settings_of(config))
    assert args[:3] == ["-k", "a", "-v"]
    assert "--kv-seed" in args and args[args.index("--kv-seed") + 1] == "9"
    assert args[args.index("--backend") + 1] == "sim" and args[-1] == "test_a.py"
