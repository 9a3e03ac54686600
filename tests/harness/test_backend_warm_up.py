"""A session warms its backend up (the sim's first NIXL agent, in the background) only when its tests
make an LLMDataDist: kvtest's own tests with fake roles must not pay for an agent they never use."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from kvtest.run import session as session_module
from kvtest.run.session import SessionHooks


class _Backend:
    name = "fake"

    def __init__(self) -> None:
        self.warmed: list[str] = []

    def warm_up(self, role: str) -> None:
        self.warmed.append(role)


def _resolve(monkeypatch: pytest.MonkeyPatch, fixtures: list[tuple[str, ...]]) -> list[str]:
    backend = _Backend()
    monkeypatch.setattr(session_module, "chosen_backend", lambda config: (backend, "because"))
    hooks: Any = object.__new__(SessionHooks)
    hooks.config, hooks.me = None, "d1"
    hooks.member = SimpleNamespace(backend_why=None, backend_name=None)
    hooks.kv_items = {f"t{i}": SimpleNamespace(fixturenames=names) for i, names in enumerate(fixtures)}
    hooks.resolve_backend()
    assert hooks.member.backend_name == "fake"
    return backend.warmed


def test_a_session_whose_tests_make_a_datadist_warms_up(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _resolve(monkeypatch, [("kv",), ("kv", "datadist", "case")]) == ["d1"]


def test_a_session_without_one_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _resolve(monkeypatch, [("kv",), ("kv", "kv_backend")]) == []
    assert _resolve(monkeypatch, []) == []
