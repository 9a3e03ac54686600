"""Which roles touch their memory ahead first (kvtest.run.touch_ahead.comes_first): those with a test
that makes an LLMDataDist among the run's first LEAD tests; a test without one does not count."""

from __future__ import annotations

from collections.abc import Sequence

from kvtest.run.touch_ahead import LEAD, comes_first, touches_after


def _order(late: int) -> list[tuple[Sequence[str], bool]]:
    """p0 and d0 from test 0; test 1 names d1 but makes no LLMDataDist; p1's first test is ``late``."""
    order: list[tuple[Sequence[str], bool]] = [(("p0", "d0"), True) for _ in range(late + 2)]
    order[1] = (("p0", "d1"), False)
    order[late] = (("p0", "p1", "d0"), True)
    return order


def test_the_roles_of_the_first_tests_come_first() -> None:
    assert comes_first("p0", _order(20)) and comes_first("d0", _order(20))


def test_a_role_whose_first_test_is_past_the_lead_does_not() -> None:
    assert not comes_first("p1", _order(LEAD))
    assert comes_first("p1", _order(LEAD - 1))


def test_a_test_without_an_llmdatadist_does_not_count_nor_a_role_with_none() -> None:
    assert not comes_first("d1", _order(20))
    assert not comes_first("d1", [])


def test_later_roles_touch_in_the_order_their_memory_is_needed() -> None:
    """The nightly xPyD order: p1 is first needed by 2p1d, d1 two tests later by 1p2d, and 2p2d needs both."""
    order: list[tuple[Sequence[str], bool]] = [(("p0", "d0"), True) for _ in range(20)]
    order += [(("p0", "p1", "d0"), True), (("p0", "d0"), True), (("p0", "d0", "d1"), True),
              (("p0", "p1", "d0", "d1"), True)]
    assert [touches_after(role, order) for role in ("p0", "d0", "p1", "d1")] == [0, 0, 0, 1]
    both = order[:20] + [(("p0", "p1", "d0", "d1"), True)]
    assert touches_after("p1", both) == touches_after("d1", both) == 0  # needed at once: side by side
    assert touches_after("d1", order[:20]) == 0  # a role with no test of its own


def test_a_role_that_comes_first_touches_after_no_one() -> None:
    assert touches_after("d1", [(("p0", "d0", "d1"), True), (("p0", "p1", "d0"), True)]) == 0
