"""Which roles' memory is touched ahead first (``Backend.touch_ahead(cache_bytes, first)``).

Every role starts touching ahead as its session starts, but the roles of one host share its cores:
while the roles whose first tests come first (p0 and d0) touch theirs, a role whose first test comes
later (p1, d1 of the nightly xPyD tests) waits (:mod:`kvtest.host.busy`). Before that order, p1 and d1
touching 1.28 GiB each beside d0 slowed d0's own first large cache, faulted fresh inside copy_blocks
while p0 waited (3.3-6.5 s outside that test, 0.6-1.2 s with the order). Waiting for the early roles
by way of the store instead (each saying when it was done, read at each announced test) left p1 and
d1 too little time before their tests (2p1d and 1p2d: +1 s outside each).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["LEAD", "comes_first"]

#: a role whose first test that makes an LLMDataDist is among the run's first LEAD tests comes first
LEAD = 8


def comes_first(me: str, order: Iterable[tuple[Sequence[str], bool]]) -> bool:
    """Whether role ``me`` has a test among the first :data:`LEAD` of ``order`` (the run's multi-role
    tests in order, as (their roles, whether they make an LLMDataDist)) that makes an LLMDataDist."""
    for i, (roles, datadist) in enumerate(order):
        if i >= LEAD:
            return False
        if datadist and me in roles:
            return True
    return False
