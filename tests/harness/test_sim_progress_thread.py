"""The sim's NIXL agents: the UCX progress thread waits between idle wake-ups instead of spinning.

nixl_agent's Python constructor sets ``pthrDelay = 0``, which makes the UCX backend's shared progress
thread poll with a zero timeout (a busy loop that cost each live agent 0.65 of a core here, mostly
system time). :func:`kvtest.backends.sim.transport.make_agent` raises the delay; these tests read the
value the native agent is built with, and show that the plain constructor would give it 0.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("nixl_cu12")

from kvtest.backends.sim import transport  # noqa: E402


class _Built(Exception):
    """Raised by the recording stand-in for the native agent: the config is all we need."""


def _delay_given(monkeypatch: pytest.MonkeyPatch, build: Any) -> int:
    """The ``pthrDelay`` the native ``nixlAgent`` receives when ``build(name)`` makes an agent."""
    import importlib

    api: Any = importlib.import_module("nixl_cu12._api")
    seen: list[int] = []

    def record(name: str, config: Any) -> None:
        seen.append(int(config.pthrDelay))
        raise _Built(name)

    monkeypatch.setattr(api.nixlBind, "nixlAgent", record)
    with pytest.raises(_Built):
        build("kvtest-progress-delay-test")
    assert len(seen) == 1
    return seen[0]


def test_sim_agents_progress_thread_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _delay_given(monkeypatch, transport.make_agent) == transport.PROGRESS_DELAY_US >= 1000


def test_the_plain_constructor_would_spin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: without make_agent the native agent gets 0, so the check above can fail."""
    import importlib

    api: Any = importlib.import_module("nixl_cu12._api")

    def plain(name: str) -> Any:
        return api.nixl_agent(name, api.nixl_agent_config(backends=["UCX"]))

    assert _delay_given(monkeypatch, plain) == 0


def test_make_agent_leaves_nixl_as_it_was() -> None:
    """The binding module nixl_agent reads is restored, and a real agent is made and works."""
    import importlib

    api: Any = importlib.import_module("nixl_cu12._api")
    before = api.nixlBind
    agent = transport.make_agent("kvtest-progress-delay-real")
    assert api.nixlBind is before
    assert agent.get_agent_metadata()
