"""Which roles' memory is touched ahead first (``Backend.touch_ahead(device_bytes, first)``).

Every role starts touching ahead as its session starts, but the roles of one host share its cores:
while the roles whose first tests come first (p0 and d0) touch theirs, a role whose first test comes
later (p1, d1 of the nightly xPyD tests) waits (:mod:`kvtest.host.busy`). Before that order, p1 and d1
touching 1.28 GiB each beside d0 slowed d0's own first large cache, faulted fresh inside copy_blocks
while p0 waited: nightly, 3 runs each, copy_blocks 3.60 s outside (2.09-4.59) without the order, 1.95 s
(1.75-2.14) with it. p1 and d1 then touch later: 2p1d and 1p2d with 1 MiB blocks 1.63 -> 2.94 s and
1.27 -> 1.66 s (docs/results.md, seventh round). A role that comes first joins the run only once its
memory is touched (``SessionHooks.wait_touched_ahead``): the first tests then touch nothing fresh.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["LEAD", "comes_first", "first_needs", "touches_after"]

#: a role whose first test that makes an LLMDataDist is among the run's first LEAD tests comes first
LEAD = 8


def first_needs(order: Iterable[tuple[Sequence[str], bool]]) -> dict[str, int]:
    """Each role's first need: the index in ``order`` (the run's multi-role tests in order, as (their
    roles, whether they make an LLMDataDist)) of its first test that makes an LLMDataDist."""
    found: dict[str, int] = {}
    for i, (roles, datadist) in enumerate(order):
        if datadist:
            for role in roles:
                found.setdefault(role, i)
    return found


def comes_first(me: str, order: Iterable[tuple[Sequence[str], bool]]) -> bool:
    """Whether role ``me`` has a test among the first :data:`LEAD` of ``order`` (the run's multi-role
    tests in order, as (their roles, whether they make an LLMDataDist)) that makes an LLMDataDist."""
    mine = first_needs(order).get(me)
    return mine is not None and mine < LEAD


def touches_after(me: str, order: Iterable[tuple[Sequence[str], bool]]) -> int:
    """How many roles that do not come first need their memory before role ``me`` does (their first test
    that makes an LLMDataDist comes earlier in ``order``): ``me`` touches its own after theirs.

    Two such roles touching at once took turns step by step, and the one needed first could lose: the
    nightly run's p1 (first needed by the 2p1d test) had touched 300 MiB of its 1.28 GiB when that test
    began, d1 (first needed two tests later) all of it; p1 faulted the rest inside the test while p0
    and d0 waited.
    """
    first_need = first_needs(order)
    mine = first_need.get(me)
    if mine is None or mine < LEAD:  # no test of its own, or it comes first (comes_first)
        return 0
    return sum(1 for i in first_need.values() if LEAD <= i < mine)
