"""What a multi-role test sees of its peers: ``kv.barrier``, ``kv.publish``/``kv.fetch``, ``kv.step``.

One :class:`TestScope` exists per test and role. Every key it writes sits under the test's sequence
number in the run, so two tests (or two runs) never read each other's values.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from typing import Any

import pytest

from kvtest.results.metrics import TransferLog
from kvtest.roles.topology import Topology, parse_role_name
from kvtest.run.messages import ABORT_SHAPE, Abort
from kvtest.run.rendezvous import PeerFailed, RendezvousError, RunStore, keys

__all__ = ["TestScope", "test_seed"]

TEARDOWN = "teardown"
#: what a role writes when it fails or skips a test, so the others stop waiting for it


class TestScope:
    """The rendezvous of one test as one role sees it.

    :param roles: the roles taking part in this test (a subset of the session topology).
    :param timeout: seconds any one wait may take (``--kv-timeout`` or the ``kv`` marker).
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self, store: RunStore, seq: int, me: str, roles: Iterable[str], topology: Topology, timeout: float
    ) -> None:
        self.store = store
        self.seq = seq
        self.me = me
        self.roles = tuple(roles)
        self.topology = topology
        self.timeout = timeout
        self.prefix = keys.test(seq)
        self.current_step = "setup"
        #: set when pytest starts this test's teardown: steps then read ``teardown: <step>``
        self.tearing_down = False
        self._generations: dict[str, int] = {}
        #: the test's seed, the same on every role (see test_seed)
        self.seed = 0
        #: the transfers this role timed in this test
        self.metrics = TransferLog(role=me)

    @property
    def role(self) -> str:
        """``"p"`` or ``"d"``."""
        return parse_role_name(self.me)[0]

    @property
    def rank(self) -> int:
        return parse_role_name(self.me)[1]

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(r for r in self.roles if r != self.me)

    def roles_of(self, side: str) -> tuple[str, ...]:
        return tuple(r for r in self.roles if r.startswith(side))

    def step(self, name: str) -> None:
        """Record the step this role has reached; a failure or death is reported at this step."""
        if self.tearing_down and not name.startswith(TEARDOWN):
            name = f"{TEARDOWN}: {name}"
        self.current_step = name
        self.store.set(keys.step(self.seq, self.me), name)

    def begin_teardown(self) -> None:
        """pytest starts tearing this test down: what fails from here on fails at step ``teardown``."""
        self.tearing_down = True
        self.step(TEARDOWN)

    def peer_step(self, role: str) -> str | None:
        """The step ``role`` last announced; None when it announced none or the store is unreachable
        (this is asked while reporting a failure, which must not fail again)."""
        try:
            step = self.store.read(keys.step(self.seq, role))
        except RendezvousError:
            return None
        return None if step is None else str(step)

    def check_abort(self) -> None:
        """Raise :class:`PeerFailed` when another role has already failed this test."""
        data = self.store.read(keys.abort(self.seq), shape=ABORT_SHAPE)
        if data is not None:
            info = Abort.from_json(data, self.store.key(keys.abort(self.seq)), self.me)
            if info.role != self.me:
                if info.skipped:
                    pytest.skip(f"{info.role} skipped: {info.message}")
                raise PeerFailed(info.role, info.step, info.message)

    def check_peers(self) -> None:
        """Raise now when another role has failed this test or died; for loops that poll the API."""
        self.check_abort()
        if self.peers:
            self.store.check_peers(self.peers)

    def abort(self, message: str, *, skipped: bool = False) -> None:
        """Tell the other roles this role failed (or skipped), so their waits end now, not at a timeout."""
        self.store.set_if_absent(
            keys.abort(self.seq),
            Abort(self.me, self.current_step, message, skipped).to_json(),
        )

    def barrier(self, name: str, roles: Iterable[str] | None = None) -> None:
        """Wait until every role in ``roles`` (default: all of this test's) reaches this barrier."""
        members = tuple(roles) if roles is not None else self.roles
        if self.me not in members:
            raise ValueError(f"{self.me} is not a member of barrier {name!r} ({', '.join(members)})")
        generation = self._generations.get(name, 0)
        self._generations[name] = generation + 1
        # One signed arrival per member, not a shared counter: nobody can arrive in another's name.
        base = keys.barrier(self.prefix, name, generation)
        self.step(f"barrier {name}")
        self.store.set(f"{base}/{self.me}", True)
        others = [m for m in members if m != self.me]
        deadline = time.monotonic() + self.timeout
        for member in others:
            self.store.wait(
                f"{base}/{member}",
                what=f"barrier {name!r} with {', '.join(others)}",
                timeout=max(deadline - time.monotonic(), 0.001),
                peers=others,
                abort=self.check_abort,
            )
        # not the step from before the barrier: a later failure must not name a step long past
        self.step(f"after barrier {name}")

    def publish(self, name: str, value: Any) -> None:
        """Make a JSON value available to the other roles of this test."""
        self.store.set(keys.value(self.prefix, self.me, name), value)

    def fetch(self, role: str, name: str) -> Any:
        """Wait for the value ``role`` published under ``name`` and return it."""
        return self.store.wait(
            keys.value(self.prefix, role, name),
            what=f"{role}'s {name!r}",
            timeout=self.timeout,
            peers=[role],
            abort=self.check_abort,
        )


def test_seed(run_seed: int, nodeid: str) -> int:  # not a test: see __test__ below
    """The per-test seed, the same on every role: the run seed mixed with the test id."""
    return (run_seed * 1_000_003 + zlib.crc32(nodeid.encode())) % (2**63)


test_seed.__test__ = False  # type: ignore[attr-defined]
