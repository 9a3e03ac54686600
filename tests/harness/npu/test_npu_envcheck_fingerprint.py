"""Environment checks and the fingerprint, against fake environments and a fake CANN tree."""

from __future__ import annotations

import sys
import time

import pytest

from kvtest.host import envcheck, fingerprint
from kvtest.host.envcheck import FAIL, OK, WARN

IFACES = ["lo", "eth0", "enp189s0f0"]


@pytest.mark.parametrize(
    ("value", "status", "detail"),
    [
        (None, WARN, r"unset: gloo picks an interface"),
        ("eth0", OK, r"eth0"),
        ("eth0,enp189s0f0", OK, r"eth0,enp189s0f0"),
        ("ib0", FAIL, r"ib0: no interface named ib0 on this host"),
        ("eth0,bond1", FAIL, r"no interface named bond1"),
    ],
)
def test_gloo_socket_ifname(value, status, detail):
    env = {} if value is None else {"GLOO_SOCKET_IFNAME": value}
    check = envcheck.check_gloo_ifname(env, IFACES)
    assert check.status == status
    import re

    assert re.search(detail, check.detail), check.detail
    if status != OK:
        assert "this host has: lo, eth0, enp189s0f0" in check.fix


def test_gloo_reads_real_interfaces():
    assert "lo" in envcheck.interface_names()
    assert envcheck.check_gloo_ifname({"GLOO_SOCKET_IFNAME": "lo"}).status == OK


@pytest.mark.parametrize(
    ("value", "single_host", "status"),
    [("1", True, OK), (None, True, WARN), ("0", None, WARN), (None, False, OK), ("1", None, OK)],
)
def test_intra_roce(value, single_host, status):
    env = {} if value is None else {"HCCL_INTRA_ROCE_ENABLE": value}
    check = envcheck.check_intra_roce(single_host, env)
    assert check.status == status
    if status == WARN:
        assert check.fix == "export HCCL_INTRA_ROCE_ENABLE=1"


@pytest.mark.parametrize(
    ("value", "device_id", "status", "detail"),
    [
        (None, 0, OK, r"unset: every device visible"),
        ("4,5", 1, OK, r"logical device 1 is physical device 5"),
        ("4,5", None, OK, r"logical ids 0\.\.1"),
        ("4,5", 2, FAIL, r"exposes logical ids 0\.\.1, device 2 is not among them"),
        ("4;5", 0, FAIL, r"ASCEND_RT_VISIBLE_DEVICES='4;5' is malformed"),
    ],
)
def test_visible_devices(value, device_id, status, detail):
    import re

    env = {} if value is None else {"ASCEND_RT_VISIBLE_DEVICES": value}
    check = envcheck.check_visible_devices(device_id, env)
    assert check.status == status
    assert re.search(detail, check.detail), check.detail
    assert check.as_dict()["name"] == "ASCEND_RT_VISIBLE_DEVICES"


def test_env_checks_order():
    names = [c.name for c in envcheck.env_checks(0, True, {})]
    assert names == ["GLOO_SOCKET_IFNAME", "HCCL_INTRA_ROCE_ENABLE", "ASCEND_RT_VISIBLE_DEVICES",
                     "PYTHONDONTWRITEBYTECODE"]


@pytest.mark.parametrize(("value", "status"), [(None, OK), ("", OK), ("1", WARN)])
def test_bytecode_cache(value, status):
    check = envcheck.check_bytecode_cache({} if value is None else {"PYTHONDONTWRITEBYTECODE": value})
    assert check.status == status
    assert (check.fix == "unset PYTHONDONTWRITEBYTECODE for kvtest runs") == (status == WARN)


def _cann_tree(root, version="8.0.RC3"):
    home = root / "ascend-toolkit" / version
    (home / "aarch64-linux").mkdir(parents=True)
    (home / "aarch64-linux" / "ascend_toolkit_install.info").write_text(
        f"package_name=Ascend-cann-toolkit\nversion={version}\ninnerversion=V100R001C19\narch=aarch64\n"
    )
    (root / "ascend-toolkit" / "latest").symlink_to(home)
    (root / "driver").mkdir()
    (root / "driver" / "version.info").write_text("Version=24.1.rc2\nascendhal_version=7.35.23\n")
    (root / "firmware").mkdir()
    (root / "firmware" / "version.info").write_text("Version=7.5.0.1.129\nfirmware_version=1.0\n")
    return home


def test_fingerprint_reads_a_cann_tree(ascend_root):
    home = _cann_tree(ascend_root)
    facts = fingerprint.fingerprint("npu", [0, 1], ["192.168.1.1", "192.168.1.2"])
    assert facts["cann"] == "8.0.RC3"
    assert facts["cann_home"] == str(home.resolve())
    assert facts["driver"] == "24.1.rc2"
    assert facts["firmware"] == "7.5.0.1.129"
    assert facts["device_ids"] == "0,1"
    assert facts["device_ips"] == "192.168.1.1,192.168.1.2"
    assert facts["backend"] == "npu"
    assert all(isinstance(v, str) for v in facts.values())


def test_fingerprint_follows_set_env_variables(ascend_root, tmp_path, monkeypatch):
    _cann_tree(ascend_root, "8.0.RC3")
    other = tmp_path / "custom" / "cann-8.5.0"
    (other / "x86_64-linux").mkdir(parents=True)
    (other / "x86_64-linux" / "ascend_toolkit_install.info").write_text("version=8.5.0\n")
    monkeypatch.setenv("ASCEND_HOME_PATH", str(other))
    assert fingerprint.cann_version() == "8.5.0"
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(ascend_root / "ascend-toolkit" / "latest"))
    assert fingerprint.cann_version() == "8.0.RC3"  # ASCEND_TOOLKIT_HOME comes first


def test_fingerprint_version_cfg_fallback_and_new_layout(ascend_root):
    cann = ascend_root / "cann"
    cann.mkdir()
    (cann / "version.cfg").write_text("# version: 1.0\nruntime_running_version=[7.3.0.1.231:8.0.RC2]\n")
    assert fingerprint.cann_version() == "8.0.RC2"


def test_fingerprint_absent_facts(ascend_root, no_npu_stack):
    facts = fingerprint.fingerprint("sim")
    for key in (
        "cann",
        "cann_home",
        "driver",
        "firmware",
        "torch_npu",
        "llm_datadist",
        "device_ids",
        "device_ips",
    ):
        assert facts[key] == "absent", key
    assert facts["kvtest"] and facts["python"] and facts["host"]


def test_fingerprint_is_fast_and_imports_nothing(ascend_root, tmp_path, monkeypatch):
    _cann_tree(ascend_root)
    pkg = tmp_path / "site" / "llm_datadist"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('fingerprint must not import llm_datadist')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "llm_datadist", raising=False)
    start = time.monotonic()
    facts = fingerprint.fingerprint("npu")
    assert time.monotonic() - start < 2
    assert facts["llm_datadist"] == "CANN 8.0.RC3"
    assert "llm_datadist" not in sys.modules
