"""Every protocol message survives its JSON round trip, and a malformed one is kvtest's ProtocolError."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvtest.roles.topology import Topology
from kvtest.run.errors import ProtocolError, RendezvousError
from kvtest.run.messages import (
    Abort,
    Bye,
    Claim,
    End,
    Hello,
    RoleResult,
    TestAnnounce,
    Verdict,
    read_item,
)
from kvtest.run.signing import ANNOUNCEMENT_KEY, ForgedValue, RunSeal, Seal, Token, TokenMismatch

HELLO = Hello.make("d0", "sim", Topology(1, 1), 7, "smoke", ["t::a", "t::b"], fingerprint={"torch": "2"})
MESSAGES: list[Any] = [
    HELLO,
    RoleResult("d0", "failed", "push", "boom", "trace", transfers=({"api": "pull_blocks"},), failure="product"),
    Claim("host-a", 12, "f00d"),
    Verdict(True, stack=("torch 1 on p0 but 2 on d0",)),
    Verdict(False, "roles disagree"),
    TestAnnounce("t::a", ("p0", "d0"), {"p0": "t::b", "d0": None}),
    Abort("p0", "push", "boom", skipped=True),
    Bye(3),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_a_message_survives_its_json_round_trip(message: Any) -> None:
    wire = json.loads(json.dumps(message.to_json()))  # what crosses the store
    assert type(message).from_json(wire, "k", "p0") == message


def test_the_end_and_a_test_are_told_apart() -> None:
    assert read_item(End().to_json()) == End()
    announce = TestAnnounce("t::a", ("p0",), {"p0": None})
    assert read_item(json.loads(json.dumps(announce.to_json()))) == announce


MALFORMED: list[tuple[type[Any], Any, str]] = [
    (Hello, {**HELLO.to_json(), "version": 2}, "'version' is a number, not a string"),
    (RoleResult, {"role": "d0"}, "no 'outcome' member"),
    (Claim, ["host", 1], "an array where an object belongs"),
    (Verdict, {"ok": "yes"}, "'ok' is a string, not true/false"),
    (TestAnnounce, {"nodeid": "t::a", "roles": "p0", "next": {}}, "'roles' is a string, not an array"),
    (TestAnnounce, {"nodeid": "t::a", "roles": [1], "next": {}}, "roles or next that are not"),
    (Abort, {"role": "p0", "step": "x", "message": "m"}, "no 'skipped' member"),
    (Bye, {"failed": "3"}, "'failed' is a string, not a number"),
]


@pytest.mark.parametrize(("kind", "data", "problem"), MALFORMED, ids=lambda v: getattr(v, "__name__", None))
def test_a_malformed_message_is_a_protocol_error(kind: type[Any], data: Any, problem: str) -> None:
    with pytest.raises(ProtocolError, match=r"^d0 read a value of the wrong shape under 'kvtest/r/x' \(.*"):
        kind.from_json(data, "kvtest/r/x", "d0")
    with pytest.raises(ProtocolError) as caught:
        kind.from_json(data, "kvtest/r/x", "d0")
    assert problem in str(caught.value)
    assert isinstance(caught.value, RendezvousError)  # the sessions' handlers catch it as a store failure


def test_read_item_refuses_what_is_neither_a_test_nor_the_end() -> None:
    with pytest.raises(ProtocolError, match="no 'nodeid' member"):
        read_item({"end": "yes"}, "kvtest/r/item/0", "d0")


TOKEN = Token(b"0123456789abcdef0123")
OTHER = Token(b"fedcba9876543210fedc")


def test_one_seal_signs_and_reads_a_value_and_refuses_every_other() -> None:
    mine = RunSeal(TOKEN, "d0")
    text = mine.encode("r", "kvtest/r/k", {"a": 1})
    assert mine.decode("r", "kvtest/r/k", text.encode()) == {"a": 1}
    with pytest.raises(ForgedValue, match="is not signed with this run's token: someone else is writing"):
        mine.decode("r", "kvtest/r/k", json.dumps({"a": 1}).encode())
    with pytest.raises(ForgedValue, match="is not signed with this run's token"):  # signed for another key
        mine.decode("r", "kvtest/r/other", text.encode())
    with pytest.raises(ForgedValue, match=f"signed with another token \\(id {OTHER.id}"):
        mine.decode("r", "kvtest/r/k", RunSeal(OTHER, "x").encode("r", "kvtest/r/k", 1).encode())
    with pytest.raises(TokenMismatch, match="but d0 was started without one"):
        RunSeal(None, "d0").decode("r", "kvtest/r/k", text.encode())


def test_one_seal_reads_the_run_announcement() -> None:
    mine = RunSeal(TOKEN, "d0")
    signed = mine.read_announcement(mine.announce("run-1").encode())
    assert (signed.run_id, signed.verdict, signed.their_id) == ("run-1", Seal.VALID, TOKEN.id)
    unsigned = mine.read_announcement(b"run-1")
    assert (unsigned.run_id, unsigned.verdict) == ("run-1", Seal.UNSIGNED)
    other = mine.read_announcement(RunSeal(OTHER, "p0").announce("run-1").encode())
    assert (other.run_id, other.verdict, other.their_id) == ("run-1", Seal.OTHER_TOKEN, OTHER.id)
    forged = json.loads(mine.announce("run-1"))
    forged["json"] = json.dumps("run-2")  # the run id changed under the signature
    assert mine.read_announcement(json.dumps(forged).encode()).verdict is Seal.BAD
    assert RunSeal(None, "d0").read_announcement(b"run-1").verdict is Seal.VALID
    assert str(mine.forged(ANNOUNCEMENT_KEY, Seal.BAD)) == (
        "a value under 'kvtest/current-run' is not signed with this run's token: "
        "someone else is writing to this rendezvous"
    )
    assert "signed with token" in str(mine.mismatch("run-1", "tcp://h:1", OTHER.id))
