"""kvtest's pytest plugin: options, ini keys, the ``kv`` marker, settings resolution and the hooks.

Precedence of every setting, high to low: ``kv`` marker, command line, environment (``KVTEST_*``),
ini file, default. The session logic lives in :mod:`kvtest.session`; backends load only when a run
needs them.
"""

from __future__ import annotations

import os
from typing import Any, Union

import pytest

from kvtest.backends.protocol import Backend, BackendUnavailable
from kvtest.context import TestScope
from kvtest.fixtures import datadist, kv_backend  # noqa: F401  (fixtures are found by name in the plugin)
from kvtest.session import KV_FIXTURE, KV_ITEM, FollowerSession, LeaderSession
from kvtest.settings import OPTIONS, PRECEDENCE, Settings, parse_timeout, resolve
from kvtest.topology import Topology, parse_topology

__all__ = ["SETTINGS", "marker_settings", "settings_of"]

SETTINGS = pytest.StashKey[Settings]()
BACKEND = pytest.StashKey[tuple[Backend, str]]()
SESSION = pytest.StashKey[Union[LeaderSession, FollowerSession]]()

MARKER_HELP = (
    "kv(topology='1p1d', timeout=SECONDS): a test run by several roles (p and d processes) together; "
    "topology names the roles it needs, timeout overrides --kv-timeout for its steps"
)
MARKER_KEYS = {"topology", "timeout"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvtest", f"kvtest (precedence: {PRECEDENCE})")
    for option in OPTIONS:
        text = f"{option.help} [env {option.env}, ini {option.ini}]"
        group.addoption(option.flag, dest=option.cli_dest, default=None, metavar=option.metavar, help=text)
        parser.addini(option.ini, help=f"{option.help} (command line: {option.flag})", default="")


def settings_of(config: pytest.Config) -> Settings:
    return config.stash[SETTINGS]


def _is_xdist_controller(config: pytest.Config) -> bool:
    return getattr(config.option, "dist", "no") != "no" and not hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    cli = {o.dest: getattr(config.option, o.cli_dest, None) for o in OPTIONS}
    ini = {o.ini: str(config.getini(o.ini) or "") for o in OPTIONS}
    inifile = str(config.inipath) if config.inipath else "the ini file"
    settings = resolve(cli, os.environ, ini, inifile)
    config.stash[SETTINGS] = settings
    _check_fault_spec()
    if settings.backend == "npu":
        resolve_backend_name(config)  # a missing npu stack is a usage error now, not at the first test
    if _is_xdist_controller(config):
        if not settings.local_mode:
            raise pytest.UsageError(
                "kvtest: -n (pytest-xdist) cannot be combined with --role: each role "
                "is one process; drop -n, or drop --role to run locally"
            )
        return
    session = (
        LeaderSession(config, settings)
        if settings.local_mode or settings.is_leader
        else FollowerSession(config, settings)
    )
    config.stash[SESSION] = session
    config.pluginmanager.register(session, "kvtest-session")


def _check_fault_spec() -> None:
    text = os.environ.get("KVTEST_SIM_FAULT", "")
    if not text:
        return
    from kvtest.backends.sim.faults import parse_fault

    try:
        parse_fault(text)
    except ValueError as exc:
        raise pytest.UsageError(
            f"kvtest: {text!r} from the environment (KVTEST_SIM_FAULT) is invalid: {exc}"
        ) from None


def resolve_backend_name(config: pytest.Config) -> tuple[str, str]:
    """Load the backend once per process; return its name and why it was chosen."""
    if BACKEND not in config.stash:
        from kvtest.backends import select_backend

        settings = settings_of(config)
        try:
            config.stash[BACKEND] = select_backend(settings.backend)
        except BackendUnavailable as exc:
            raise pytest.UsageError(
                f"kvtest: --backend {settings.backend} from {settings.sources.get('backend', 'default')} "
                f"cannot be used: {exc}"
            ) from None
    backend, why = config.stash[BACKEND]
    return backend.name, why


def marker_settings(item: pytest.Item) -> dict[str, Any]:
    """The ``kv`` marker's settings, checked strictly: unknown keys and bad values are usage errors."""
    marker = item.get_closest_marker("kv")
    if marker is None:
        return {}
    where = f"the kv marker of {item.nodeid}"
    if marker.args:
        raise pytest.UsageError(
            f"kvtest: {where} takes keywords only (topology=..., timeout=...), got {marker.args!r}"
        )
    unknown = set(marker.kwargs) - MARKER_KEYS
    if unknown:
        raise pytest.UsageError(
            f"kvtest: {where} has unknown keyword(s) {', '.join(sorted(unknown))}; "
            f"it accepts {', '.join(sorted(MARKER_KEYS))}"
        )
    out: dict[str, Any] = {}
    for key, parse in (("topology", parse_topology), ("timeout", parse_timeout)):
        if key in marker.kwargs:
            raw = marker.kwargs[key]
            try:
                out[key] = parse(str(raw))
            except ValueError as exc:
                raise pytest.UsageError(f"kvtest: {raw!r} from {where} is invalid: {exc}") from None
    return out


def pytest_itemcollected(item: pytest.Item) -> None:
    if KV_FIXTURE not in getattr(item, "fixturenames", ()) and item.get_closest_marker("kv") is None:
        return
    needed: Topology = marker_settings(item).get("topology", Topology(1, 1))
    item.stash[KV_ITEM] = needed
    settings = settings_of(item.config)
    have = settings.topology or Topology(1, 1)
    if not settings.local_mode and not have.covers(needed):
        item.add_marker(
            pytest.mark.skip(
                reason=f"needs topology {needed}; this run has {have} "
                f"(start every role with --topology {needed})"
            )
        )


@pytest.fixture
def kv(request: pytest.FixtureRequest) -> TestScope:
    """This test's view of its peers: ``kv.role``, ``kv.rank``, ``kv.barrier(name)``, ``kv.publish``,
    ``kv.fetch``, ``kv.step(name)``."""
    session = request.config.stash.get(SESSION, None)
    scope = session.scope if session is not None else None
    if scope is None:
        pytest.fail(
            f"kvtest: {request.node.nodeid} has no peers in this run (it was not announced by p0)",
            pytrace=False,
        )
    return scope


BODY_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    if rep.when == "call" and rep.failed:
        item.stash[BODY_FAILED] = True
    return rep


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash.get(SETTINGS, None)
    if settings is None:
        return []
    mode = (
        "local mode (this process leads and starts the other roles)"
        if settings.local_mode
        else f"role {settings.role_name}"
    )
    return [f"kvtest: {mode}, backend {settings.backend}, profile {settings.profile}, seed {settings.seed}"]


# --- helpers the session uses -------------------------------------------------------------------


_PASS_WITH_VALUE = {
    "-p",
    "-o",
    "--override-ini",
    "-c",
    "--config-file",
    "--rootdir",
    "--confcutdir",
    "--import-mode",
    "-W",
    "--pythonwarnings",
    "-m",
    "-k",
}
_PASS_FLAGS = {"--noconftest", "-v", "--verbose", "-q", "--quiet"}
_CHILD_SETTINGS = (
    "backend",
    "profile",
    "seed",
    "timeout",
    "dead_after",
    "join_timeout",
    "device_ids",
    "local_host_ip",
    "remote_host_ips",
)


def child_arguments(config: pytest.Config, settings: Settings) -> list[str]:
    """The arguments a local child role needs to collect what p0 collected with p0's settings."""
    out: list[str] = []
    args = list(config.invocation_params.args)
    i = 0
    while i < len(args):
        arg = str(args[i])
        name = arg.split("=", 1)[0]
        if name in _PASS_WITH_VALUE:
            if "=" in arg or i + 1 >= len(args):
                out.append(arg)
            else:
                out += [arg, str(args[i + 1])]
                i += 1
        elif arg in _PASS_FLAGS or (arg.startswith("-p") and len(arg) > 2 and not arg.startswith("--")):
            out.append(arg)
        i += 1
    by_dest = {o.dest: o for o in OPTIONS}
    for dest in _CHILD_SETTINGS:
        value = getattr(settings, dest)
        if value in (None, ()):
            continue
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        out += [by_dest[dest].flag, text]
    return out + [str(a) for a in config.args]
