"""Local mode on one host: a ``--device-id`` list gives each ROLE its device, p0, p1.., d0, d1...

With ``--role`` a list is one id per rank of that role (the paired-host reading); local mode used to
pass the list through to every child, so p0 and d0 both took its first entry and every two-sided
link failed with "ranks 0 and 1 both use device 0 on host 127.0.0.1" (issue 11, point 3).
"""

from __future__ import annotations

import pytest

from kvtest.run.launcher import child_arguments
from kvtest.settings import Settings, resolve

WHO_GOT_WHAT = """
import pytest
from kvtest.state import devices_of

@pytest.mark.kv(topology="2p1d")
def test_devices(kv, kv_backend, request):
    kv.publish("device", devices_of(request.config).by_role[kv.me])
    got = {role: kv.fetch(role, "device") for role in kv.roles}
    assert got == {"p0": 2, "p1": 0, "d0": 1}, got
"""


@pytest.mark.full
def test_each_local_role_gets_its_entry_of_the_list(pytester: pytest.Pytester):
    pytester.makepyfile(test_devices=WHO_GOT_WHAT)
    result = pytester.runpytest_subprocess("--backend", "sim", "--device-id", "2,0,1")
    result.assert_outcomes(passed=1)


@pytest.mark.full
def test_a_list_that_does_not_fit_the_local_roles_is_a_usage_error(pytester: pytest.Pytester):
    pytester.makepyfile(test_devices=WHO_GOT_WHAT)
    result = pytester.runpytest_subprocess("--backend", "sim", "--device-id", "0,1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: kvtest: '0,1' from the command line (--device-id) is invalid: local mode runs 3 roles "
            "(p0, p1, d0) on this host and a list gives one id per role in that order, but it has 2; "
            "give 3 ids (e.g. --device-id 0,1,2), or one id for every role"
        ]
    )
    assert not list((pytester.path / "kvtest-logs").glob("*/*.log"))  # refused before any role started


def test_local_device_ids_follow_the_topology_order():
    settings = resolve({"device_ids": "7,6,5,4"}, {}, {})
    assert settings.local_device_ids(["p0", "p1", "d0", "d1"]) == {"p0": 7, "p1": 6, "d0": 5, "d1": 4}
    assert Settings(device_ids=(3,)).local_device_ids(["p0", "d0"]) == {"p0": 3, "d0": 3}
    assert Settings().local_device_ids(["p0", "d0"]) == {}


def test_a_child_is_given_only_its_own_device(pytester: pytest.Pytester):
    """What a local child gets on its command line: one id, never the list it would read per rank."""
    from dataclasses import replace

    from kvtest.run.launcher import _own_device

    config = pytester.parseconfigure()
    settings = Settings(device_ids=(2, 0, 1))
    device_of = settings.local_device_ids(["p0", "p1", "d0"])
    args = child_arguments(config, _own_device(settings, device_of, "d0"))
    assert args[args.index("--device-id") + 1] == "1"
    assert _own_device(Settings(), {}, "d0") == Settings()
    assert _own_device(settings, device_of, "p1") == replace(settings, device_ids=(0,))
