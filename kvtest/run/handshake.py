"""The handshake: every role claims its slot and says hello; p0 compares the hellos and publishes a
verdict that every role obeys (:class:`Handshake`). No pytest here: a refusal is
:class:`kvtest.run.errors.RunRefused`, which the hook adapter raises as a usage error.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from kvtest.run.errors import RendezvousError, RendezvousTimeout, RunRefused
from kvtest.run.failure import PeerNeverJoined
from kvtest.run.messages import (
    HELLO_SHAPE,
    VERDICT_SHAPE,
    Claim,
    Hello,
    Verdict,
    compare_hello,
    stack_differences,
)
from kvtest.run.rendezvous import RunStore, keys
from kvtest.run.signing import ForgedValue, TokenMismatch

__all__ = ["Handshake"]


class Handshake:
    """Joining a run and agreeing on it; used by the leader and by the followers."""

    def __init__(self, store: RunStore, me: Hello, roles: Sequence[str], timeout: float) -> None:
        self.store = store
        self.me = me
        self.roles = tuple(roles)
        self.timeout = timeout
        self.hellos: dict[str, Hello] = {me.role: me}  # p0: every hello it read, its own first
        self.stack: list[str] = []  # p0: how the roles' stacks differ (a follower: as p0 said)

    def claim(self) -> None:
        """Take this role's slot; a second process claiming the same role is refused.

        The claim is a signed value, not a counter: with a token, a stranger's claim is refused and
        replaced, and only a role holding the run's token can take the slot first."""
        mine = Claim(self.me.host, self.me.pid, uuid.uuid4().hex).to_json()
        if self.store.set_if_absent(keys.claim(self.me.role), mine) != mine:
            raise RunRefused(
                f"kvtest: role {self.me.role} is already taken in run {self.store.run_id}: "
                "start each role once (check --role/--rank on each host); with a file rendezvous, "
                "an earlier run may have used this --run-id: give a new one"
            )

    def lead(self, exited: Any = None, grace: float = 5.0, where: str = "") -> None:
        """p0: wait for every other role's hello, compare, publish the verdict; raise on a mismatch.

        A hello signed with another token (or none) is waited past for ``grace`` seconds, in case it
        is a stranger's and the real role's is on its way; then the run is refused.

        :raises PeerNeverJoined: roles that never said hello in time (an environment failure, not a
            usage error: the session records the run's tests as errors); ``where`` names the
            rendezvous in its message.
        :raises RunRefused: every other refusal (versions, collection, token, a bad hello).
        """
        self.store.set(keys.hello(self.me.role), self.me.to_json())
        problems: list[str] = []
        missing: list[str] = []
        deadline = time.monotonic() + self.timeout
        for role in self.roles:
            if role == self.me.role:
                continue
            try:
                other = Hello.from_json(
                    self.store.wait(
                        keys.hello(role),
                        what=f"{role} to join",
                        timeout=max(deadline - time.monotonic(), 0.01),
                        peers=[role] if exited is not None else (),
                        shape=HELLO_SHAPE,
                        forged_grace=grace,
                    ),
                    self.store.key(keys.hello(role)),
                    self.me.role,
                )
            except (ForgedValue, TokenMismatch) as exc:
                self._refuse(
                    f"{role} was started with another token or none, refusing it: {exc}; give every "
                    "role the same --kv-token-file (or KVTEST_TOKEN)"
                )
            except RendezvousTimeout:
                missing.append(role)
                continue
            except RendezvousError as exc:
                self._refuse(f"{role} did not join: {exc}")
            problems += [f"{role}: {d}" for d in compare_hello(self.me, other)]
            self.hellos[role] = other
        self.stack = stack_differences(list(self.hellos.values()))
        strict = [h.role for h in self.hellos.values() if h.require_same_stack]
        if self.stack and strict:
            problems.append(
                f"stack differs between roles ({', '.join(strict)} started with --kv-require-same-stack): "
                + "; ".join(self.stack)
            )
        if problems:
            self._refuse("roles disagree, refusing to start: " + "; ".join(problems))
        if missing:
            never = PeerNeverJoined(missing, self.timeout, where)
            try:  # a role that comes late reads the refusal instead of waiting for tests
                self.store.set(keys.VERDICT, Verdict(False, str(never)).to_json())
            except RendezvousError:
                pass
            raise never
        self.store.set(keys.VERDICT, Verdict(True, stack=tuple(self.stack)).to_json())

    def _refuse(self, reason: str) -> None:
        self.store.set(keys.VERDICT, Verdict(False, reason).to_json())
        raise RunRefused(f"kvtest: {reason}")

    def follow(self) -> None:
        """A follower: say hello, then obey p0's verdict."""
        self.store.set(keys.hello(self.me.role), self.me.to_json())
        verdict = Verdict.from_json(
            self.store.wait(
                keys.VERDICT,
                what="p0's verdict on the handshake",
                timeout=self.timeout,
                peers=["p0"],
                shape=VERDICT_SHAPE,
            ),
            self.store.key(keys.VERDICT),
            self.me.role,
        )
        if not verdict.ok:
            raise RunRefused(f"kvtest: p0 refused the run: {verdict.reason}")
        self.stack = list(verdict.stack)
