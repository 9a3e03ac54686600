"""kvtest's pytest plugin: options, ini keys, the ``kv`` marker, settings resolution and the hooks.

Precedence of every setting, high to low: ``kv`` marker, command line, environment (``KVTEST_*``),
ini file, default. The session's hook adapters and the hook order they rely on are in
:mod:`kvtest.run.session`; backends load only when a run needs them.
"""

from __future__ import annotations

import gc
import os
from typing import Any, Union

import pytest

from kvtest.cases import device_bytes
from kvtest.dropin.vendor import FLAG as VENDOR_FLAG
from kvtest.fixtures import datadist, kv_backend  # noqa: F401  (fixtures are found by name in the plugin)
from kvtest.host import reused_memory
from kvtest.option_paths import rootdir_taken_from
from kvtest.results.known_issues import settle
from kvtest.roles.topology import Topology
from kvtest.run.follower_session import FollowerSession
from kvtest.run.leader_session import LeaderSession
from kvtest.run.scope import TestScope
from kvtest.run.session import KV_DEVICE_BYTES, KV_FIXTURE, KV_ITEM
from kvtest.settings import OPTIONS, PRECEDENCE, resolve, unknown_names
from kvtest.state import BODY_FAILED, SETTINGS, chosen_backend, marker_settings, settings_of

SESSION = pytest.StashKey[Union[LeaderSession, FollowerSession]]()

MARKER_HELP = (
    "kv(topology='1p1d', timeout=SECONDS): a test run by several roles (p and d processes) together; "
    "topology names the roles it needs, timeout overrides --kv-timeout for its steps"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvtest", f"kvtest (precedence: {PRECEDENCE})")
    for option in OPTIONS:
        text = f"{option.help} [env {option.env}, ini {option.ini}]"
        if option.switch:  # no value on the command line; "true" goes through the switch's parser
            group.addoption(option.flag, dest=option.cli_dest, action="store_const", const="true",
                            default=None, help=text)
        else:
            group.addoption(
                option.flag, dest=option.cli_dest, default=None, metavar=option.metavar, help=text
            )
        parser.addini(option.ini, help=f"{option.help} (command line: {option.flag})", default="")


def _is_xdist_controller(config: pytest.Config) -> bool:
    return getattr(config.option, "dist", "no") != "no" and not hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # --kv-vendor-samples has a stricter check of its own (VendorSamples): its folder is refused after a
    # space whatever pytest made of it
    flags = (o.flag for o in OPTIONS if not o.switch and o.flag != VENDOR_FLAG)
    taken = rootdir_taken_from(config, flags)
    if taken is not None:
        flag, value = taken
        raise pytest.UsageError(
            f"kvtest: {flag} {value} (command line): pytest took this existing path for a place to look "
            f"for its rootdir and ran from {config.rootpath}, without the project's configuration "
            f"(pytest-dev/pytest#8846); write {flag}={value}"
        )
    config.addinivalue_line("markers", MARKER_HELP)
    if config.pluginmanager.hasplugin("html"):  # pytest-html: its hooks exist only when it is active
        from kvtest.results.html_figures import HtmlFigures

        config.pluginmanager.register(HtmlFigures(), "kvtest-html-figures")
    cli = {o.dest: getattr(config.option, o.cli_dest, None) for o in OPTIONS}
    ini = {o.ini: str(config.getini(o.ini) or "") for o in OPTIONS}
    inifile = str(config.inipath) if config.inipath else "the ini file"
    settings = resolve(cli, os.environ, ini, inifile)
    config.stash[SETTINGS] = settings
    for problem in unknown_names(os.environ, _ini_keys(config)):
        config.issue_config_time_warning(pytest.PytestConfigWarning(problem), stacklevel=2)
    _check_fault_spec()
    _check_sim_fixed()
    if settings.backend == "npu":
        chosen_backend(config)  # a missing npu stack is a usage error now, not at the first test
    if _is_xdist_controller(config):
        if settings.artifacts is not None:
            raise pytest.UsageError(
                "kvtest: --kv-artifacts cannot be combined with -n (pytest-xdist) yet: every worker "
                "would lead a run of its own; drop -n, or drop --kv-artifacts and use --junitxml"
            )
        if not settings.local_mode:
            by = f"{settings.launch.title}'s ranks" if settings.launch is not None else "--role"
            raise pytest.UsageError(
                f"kvtest: -n (pytest-xdist) cannot be combined with {by}: each role "
                "is one process; drop -n, or drop --role (--kv-launcher none) to run locally"
            )
        return
    session = (
        LeaderSession(config, settings)
        if settings.local_mode or settings.is_leader
        else FollowerSession(config, settings)
    )
    config.stash[SESSION] = session
    config.pluginmanager.register(session, "kvtest-session")
    if os.environ.get("KVTEST_SIM_STORE"):
        from kvtest.dropin.environment import name_sim_role

        name_sim_role(settings.role_name)
    if settings.vendor_samples is not None:
        from kvtest.dropin.vendor import VendorSamples

        config.pluginmanager.register(VendorSamples(config, settings), "kvtest-vendor-samples")


def _ini_keys(config: pytest.Config) -> list[str]:
    # pytest 9 deprecates Config.inicfg (a warning on access) in favour of its private _inicfg.
    inicfg = getattr(config, "_inicfg", None)
    return list(inicfg if inicfg is not None else config.inicfg)


def _check_fault_spec() -> None:
    text = os.environ.get("KVTEST_SIM_FAULT", "")
    if not text:
        return
    from kvtest.backends.sim.faults import parse_faults

    try:
        parse_faults(text)
    except ValueError as exc:
        raise pytest.UsageError(
            f"kvtest: {text!r} from the environment (KVTEST_SIM_FAULT) is invalid: {exc}"
        ) from None
    from kvtest.backends.sim.faults import SCOPE_ENV_VAR, fault_scope

    try:
        fault_scope(os.environ.get(SCOPE_ENV_VAR, ""))
    except ValueError as exc:
        raise pytest.UsageError(f"kvtest: {exc} (from the environment)") from None


def _check_sim_fixed() -> None:
    text = os.environ.get("KVTEST_SIM_FIXED", "")
    if not text:
        return
    from kvtest.backends.sim.upstream import parse_fixed

    try:
        parse_fixed(text)
    except ValueError as exc:
        raise pytest.UsageError(
            f"kvtest: {text!r} from the environment (KVTEST_SIM_FIXED) is invalid: {exc}; "
            "fix: name only ids the sim reproduces, or unset it"
        ) from None


def pytest_itemcollected(item: pytest.Item) -> None:
    if KV_FIXTURE not in getattr(item, "fixturenames", ()) and item.get_closest_marker("kv") is None:
        return
    needed: Topology = marker_settings(item).get("topology", Topology(1, 1))
    item.stash[KV_ITEM] = needed
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        # a test names its case parameter as it likes (case, blocks_case, slot_case...)
        item.stash[KV_DEVICE_BYTES] = max(map(device_bytes, callspec.params.values()), default=0)
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


def pytest_collection_finish(session: pytest.Session) -> None:
    # What exists now (torch, NIXL, the collected tests) lives all session: frozen, the cyclic collector
    # skips it, so reused_memory.sweep's collections take about 0.1 ms in a role process, not 90 ms.
    gc.collect()
    gc.freeze()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    gc.unfreeze()  # an in-process pytest run (pytester) must not leave its garbage uncollectable


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # an earlier test's buffers kept alive by a reference cycle go back to the arena before this test
    # asks for its own (reused_memory.sweep)
    reused_memory.sweep()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    if rep.when == "call" and rep.failed:
        item.stash[BODY_FAILED] = True
    if SESSION not in item.config.stash:  # otherwise the session settles after merging the roles
        settle(item, rep, decides=True)
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
    lines = [f"kvtest: {mode}, backend {settings.backend}, profile {settings.profile}, seed {settings.seed}"]
    launch = settings.launch
    if launch is not None and settings.rendezvous is not None:
        lines.append(
            f"kvtest: {launch.title}: rank {launch.rank} of {launch.world_size} -> {settings.role_name} "
            f"(topology {settings.topology}), rendezvous: {settings.rendezvous.describe()} "
            f"[from {launch.evidence}]"
        )
    return lines
