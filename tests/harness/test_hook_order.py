"""The hook order the session relies on (kvtest.run.session's table, HOOK_ORDER) is the order pluggy
really calls: checked in a real pytest run with the session and the artifacts plugin registered."""

from __future__ import annotations

import json

import pytest

from kvtest.run.session import HOOK_ORDER

RECORD = '''
import json, os

def _order(config, hook):
    impls = getattr(config.pluginmanager.hook, hook).get_hookimpls()
    names = [config.pluginmanager.get_name(i.plugin) for i in reversed(impls)]  # call order
    return [n for n in names if n in ("kvtest", "kvtest-session", "kvtest-artifacts")]

def pytest_collection_finish(session):
    config = session.config
    hooks = ("pytest_collection_modifyitems", "pytest_runtestloop", "pytest_runtest_makereport",
             "pytest_unconfigure")
    with open(os.environ["ORDER_FILE"], "w") as f:
        json.dump({h: _order(config, h) for h in hooks}, f)
'''


def observed_order(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    pytester.makeconftest(RECORD)
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    out = pytester.path / "order.json"
    monkeypatch.setenv("ORDER_FILE", str(out))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kv-artifacts", str(pytester.path / "a"))
    assert result.ret == 0, result.stdout.str()
    order: dict[str, list[str]] = json.loads(out.read_text())
    return order


def test_the_stated_hook_order_is_pluggys(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    order = observed_order(pytester, monkeypatch)
    # every (hook, plugin) the table names, in the table's order within each hook
    for hook in {h for h, _, _ in HOOK_ORDER}:
        stated = [plugin for h, plugin, _ in HOOK_ORDER if h == hook]
        seen = [plugin for plugin in order[hook] if plugin in stated]
        assert seen == stated, f"{hook}: pluggy calls {order[hook]}, kvtest.run.session states {stated}"
    # the session's collection hook is the first kvtest one: it sees every collected test
    assert order["pytest_collection_modifyitems"][0] == "kvtest-session"
