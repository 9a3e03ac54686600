"""Settings: precedence, and every bad value as a one-line usage error naming value, source and fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvtest.roles.topology import Topology
from kvtest.settings import Rendezvous, resolve


def res(cli=None, env=None, ini=None):
    return resolve(cli or {}, env or {}, ini or {}, "pytest.ini")


def test_defaults_are_local_mode():
    s = res()
    assert s.local_mode and s.is_leader and s.role_name == "p0"
    assert s.backend == "auto" and s.profile == "smoke" and s.topology is None


def test_precedence_cli_over_env_over_ini():
    ini = {"kv_profile": "stress", "kv_seed": "1", "kv_backend": "npu"}
    env = {"KVTEST_PROFILE": "nightly", "KVTEST_SEED": "2"}
    s = res({"profile": "smoke"}, env, ini)
    assert (s.profile, s.seed, s.backend) == ("smoke", 2, "npu")
    assert s.sources["profile"] == "the command line (--kv-profile)"
    assert s.sources["seed"] == "the environment (KVTEST_SEED)"
    assert s.sources["backend"] == "the ini file (kv_backend in pytest.ini)"


@pytest.mark.parametrize(
    ("given", "timeout"),
    [
        ({}, 60.0),
        ({"profile": "nightly"}, 600.0),
        ({"profile": "stress"}, 1800.0),
        ({"profile": "nightly", "timeout": "90"}, 90.0),  # a timeout given anywhere wins
    ],
)
def test_step_timeout_follows_the_profile_unless_given(given, timeout):
    assert res(given).timeout == timeout
    assert res({}, {"KVTEST_PROFILE": "stress", "KVTEST_TIMEOUT": "5"}).timeout == 5.0


def test_paired_settings_parse():
    s = res({"role": "d", "rank": "1", "topology": "2p2d", "rendezvous": "tcp://192.0.2.1:29500",
             "device_ids": "4,5", "remote_host_ips": "192.0.2.1", "local_host_ip": "192.0.2.2"})
    assert s.role_name == "d1" and not s.is_leader and s.device_id() == 5
    assert s.topology == Topology(2, 2)
    assert s.rendezvous == Rendezvous("tcp", host="192.0.2.1", port=29500)
    assert str(s.rendezvous) == "tcp://192.0.2.1:29500"


def test_ipv6_rendezvous():
    s = res({"role": "p", "rendezvous": "tcp://[::1]:29500"})
    assert s.rendezvous == Rendezvous("tcp", host="::1", port=29500)


BAD_CLI = [
    ({"role": "x"}, r"'x' from the command line \(--role\) is invalid: the role must be p"),
    ({"role": "d", "rank": "5", "rendezvous": "tcp://127.0.0.1:1"}, r"rank 5 is outside topology 1p1d.*--rank 0\.\.0"),
    ({"rank": "-1"}, r"'-1' from the command line \(--rank\) is invalid: the rank must be from 0 to 15"),
    ({"topology": "0p1d"}, r"'0p1d' .* number of p processes must be 1\.\.16"),
    ({"topology": "1p0d"}, r"'1p0d' .* number of d processes must be 1\.\.16"),
    ({"topology": "17p1d"}, r"'17p1d' .* must be 1\.\.16"),
    ({"topology": "two"}, r"'two' .* expected XpYd"),
    ({"role": "p", "rendezvous": "tcp://host"}, r"'tcp://host' .* expected HOST:PORT"),
    ({"role": "p", "rendezvous": "tcp://host:70000"}, r"the port must be from 1 to 65535"),
    ({"role": "p", "rendezvous": "tcp://host:http"}, r"the port must be a whole number"),
    ({"role": "p", "rendezvous": "http://host:1"}, r"'http://host:1' .* expected tcp://HOST:PORT .* or file:///PATH"),
    ({"role": "p", "rendezvous": "file:///no/such/dir/store"}, r"the directory /no/such/dir does not exist"),
    ({"role": "p", "rendezvous": "file:///proc/sys/kvtest-store"}, r"is not writable"),
    ({"role": "p", "rendezvous": "file://relative"}, r"a FileStore needs an absolute path"),
    ({"remote_host_ips": "192.0.2.7,192.0.2.7"}, r"192\.0\.2\.7 is listed twice; list each peer host once"),
    ({"local_host_ip": "300.1.1.1"}, r"'300\.1\.1\.1' .* expected an IP address"),
    ({"device_ids": "0,0"}, r"a device id appears twice"),
    ({"device_ids": "x"}, r"a device id must be a whole number from 0 to 63"),
    ({"timeout": "0"}, r"the step timeout must be more than 0"),
    ({"timeout": "soon"}, r"'soon' .* must be a number of seconds"),
    ({"backend": "gpu"}, r"'gpu' from the command line \(--backend\) is invalid: the backend must be auto, npu or sim"),
    ({"profile": "huge"}, r"the profile must be one of smoke, nightly, stress"),
    ({"seed": "-3"}, r"the seed must be from 0"),
    ({"sync_kv_timeout": "0"}, r"'0' from the command line \(--kv-sync-kv-timeout\) is invalid: sync_kv_timeout must be "
                               r"a whole number of milliseconds from 1 to 2147483647, e\.g\. --kv-sync-kv-timeout 5000"),
    ({"sync_kv_timeout": "1.5s"}, r"'1\.5s' .* sync_kv_timeout must be a whole number of milliseconds"),
    ({"sync_kv_timeout": "5000"}, None),
    ({"run_id": "bad id!"}, r"a run id is 1-64 letters"),
    ({"role": "d"}, r"role d0 needs --rendezvous to find p0"),
    ({"role": "p"}, r"role p0 needs --rendezvous: the address it hosts the run on"),
    ({"role": "p", "rendezvous": "file:///tmp/kvtest-store"}, r"needs --run-id: a shared file outlives a run"),
    ({"rank": "1"}, r"--rank from the command line \(--rank\) needs --role"),
    ({"role": "p", "rank": "1", "topology": "2p1d", "rendezvous": "tcp://127.0.0.1:5", "device_ids": "0,1,2"}, None),
    ({"role": "p", "rank": "2", "topology": "3p1d", "rendezvous": "tcp://127.0.0.1:5", "device_ids": "0,1"},
     r"rank 2 has no entry in the list"),
    ({"role": "p", "rendezvous": "tcp://127.0.0.1:5"}, None),
]


@pytest.mark.parametrize(("cli", "match"), BAD_CLI, ids=[repr(c) for c, _ in BAD_CLI])
def test_bad_values_are_usage_errors(cli, match):
    if match is None:
        res(cli)  # the valid neighbours of the bad cases
        return
    with pytest.raises(pytest.UsageError, match=match) as info:
        res(cli)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("kvtest: ")


def test_error_names_environment_source():
    with pytest.raises(pytest.UsageError, match=r"'x' from the environment \(KVTEST_ROLE\) is invalid"):
        res(env={"KVTEST_ROLE": "x"})


def test_error_names_ini_source():
    with pytest.raises(pytest.UsageError, match=r"'0p2d' from the ini file \(kv_topology in pytest.ini\)"):
        res(ini={"kv_topology": "0p2d"})


def test_results_path_in_missing_directory(tmp_path: Path):
    with pytest.raises(pytest.UsageError, match=r"does not exist; create it first"):
        res({"results": str(tmp_path / "nope" / "r.json")})


# --- the same errors through pytest itself: exit code 4, one line, no traceback ----------------


def _one_line_usage_error(result, match: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "Traceback" not in err and "Traceback" not in result.stdout.str()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert re.search(match, lines[0]), lines[0]


@pytest.mark.parametrize(
    ("args", "env", "match"),
    [
        (["--role", "x"], {}, r"ERROR: kvtest: 'x' from the command line \(--role\) is invalid"),
        (["--topology", "0p1d"], {}, r"'0p1d' from the command line \(--topology\)"),
        ([], {"KVTEST_BACKEND": "tpu"}, r"'tpu' from the environment \(KVTEST_BACKEND\)"),
        ([], {"KVTEST_SIM_FAULT": "melt@pull_blocks"}, r"'melt@pull_blocks' from the environment \(KVTEST_SIM_FAULT\)"),
        (["--backend", "npu"], {}, r"--backend npu from the command line \(--backend\) cannot be used: .*llm_datadist"),
    ],
    ids=["role", "topology", "env-backend", "sim-fault", "npu-missing"],
)
def test_usage_errors_through_pytest(pytester: pytest.Pytester, monkeypatch, args, env, match):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    pytester.makepyfile("def test_x(): pass")
    _one_line_usage_error(pytester.runpytest_subprocess(*args), match)


def test_ini_error_through_pytest(pytester: pytest.Pytester):
    pytester.makeini("[pytest]\nkv_role = q\n")
    pytester.makepyfile("def test_x(): pass")
    _one_line_usage_error(pytester.runpytest_subprocess(), r"'q' from the ini file \(kv_role in .*tox.ini|'q' from the ini file \(kv_role in .*\)")


def test_bad_marker_is_usage_error(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.kv(topology="0p1d")
        def test_x(kv): pass
        """
    )
    _one_line_usage_error(pytester.runpytest_subprocess("--collect-only"), r"'0p1d' from the kv marker of .*test_x")


def test_unknown_marker_keyword_is_usage_error(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.kv(roles=2)
        def test_x(kv): pass
        """
    )
    _one_line_usage_error(pytester.runpytest_subprocess("--collect-only"), r"unknown keyword\(s\) roles; it accepts")


def test_help_lists_options_and_precedence(pytester: pytest.Pytester):
    result = pytester.runpytest_subprocess("--help")
    out = result.stdout.str()
    for flag in ("--role", "--rank", "--topology", "--rendezvous", "--run-id", "--backend", "--device-id",
                 "--local-host-ip", "--remote-host-ip", "--kv-timeout", "--kv-profile", "--kv-results",
                 "--kv-seed", "KVTEST_ROLE", "kv_role"):
        assert flag in out, flag
    assert "marker > command line > environment (KVTEST_*) > ini file > default" in " ".join(out.split())


@pytest.mark.parametrize(
    "env, ini, expected",
    [
        ({"KVTEST_PROFLE": "nightly"}, [], ["environment variable KVTEST_PROFLE: did you mean KVTEST_PROFILE?"]),
        ({"KVTEST_DEVICE_ID": "0"}, [], ["environment variable KVTEST_DEVICE_ID: did you mean KVTEST_DEVICE_IDS?"]),
        ({}, ["kv_seeed", "testpaths"], ["ini key kv_seeed: did you mean kv_seed?"]),
        ({"KVTEST_PROFILE": "nightly", "KVTEST_SIM_FAULT": "flip", "OTHER": "1"}, ["kv_seed"], []),
    ],
)
def test_unknown_kvtest_names_are_named_with_the_closest(env, ini, expected):
    from kvtest.settings import unknown_names

    found = unknown_names(env, ini)
    assert [f.split("unknown ", 1)[1] for f in found] == expected


def test_a_misspelt_variable_warns_in_a_run(pytester, monkeypatch):
    monkeypatch.setenv("KVTEST_PROFLE", "nightly")
    pytester.makepyfile(test_a="def test_a(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*kvtest ignores the unknown environment variable KVTEST_PROFLE: did you mean KVTEST_PROFILE?*"])
