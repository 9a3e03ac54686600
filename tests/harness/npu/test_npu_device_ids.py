"""Logical vs physical device ids, and what the npu path asks of the host only for a rank table.

Through the fakes in conftest.py: ``torch.npu``/``LLMDataDist.init`` accept logical ids only (as
``aclrtSetDevice``), ``hccn_tool`` answers for physical ids only. The real source: hicann/hixl
``src/llm_datadist/llm_datadist_v2.cc`` (``aclrtSetDevice(device_id)``) and
``src/llm_datadist/common/rank_table_generator_v1.cc`` (``aclrtGetPhyDevIdByLogicDevId`` before a
rank table's ``device_id`` and the device IP lookup).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from npu_pair import link_both, node

from kvtest.backends import npu
from kvtest.fixtures import _device_id
from kvtest.host import devices
from kvtest.host.devpool import DevicePool, DevicePoolError
from kvtest.node import RANK_DEVICE
from kvtest.settings import Rendezvous, Settings

NIC = "10.0.0.5"
#: device IPs by PHYSICAL id: hccn_tool -i 4 / -i 5
IPS = {4: "192.168.1.5", 5: "192.168.1.6"}


@pytest.fixture
def host_4_5(ascend_root, fake_dev, fake_npu_stack, monkeypatch, tmp_path):
    """An 8-NPU host (davinci0..7) where this run sees devices 4 and 5 (after ascend_root clears the variable)."""
    for n in range(2, 8):
        (fake_dev / f"davinci{n}").touch()
    fake_npu_stack.device_count = 8
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "4,5")
    monkeypatch.setenv("KVTEST_DEVICE_POOL_DIR", str(tmp_path / "pool"))
    return fake_dev


# -- point 3: ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "visible", "expected"),
    [
        (range(8), "4,5", {0: 4, 1: 5}),  # a whole host, the variable picks 4 and 5
        (range(8), None, {n: n for n in range(8)}),  # a whole host: logical = physical
        ((4, 5), None, {0: 4, 1: 5}),  # a container given davinci4 and davinci5
        ((4, 5), "1", {0: 5}),  # ... whose second device is picked by the variable
    ],
)
def test_logical_ids_map_through_the_variable_then_the_dev_nodes(tmp_path, nodes, visible, expected):
    dev = tmp_path / "dev"
    dev.mkdir()
    for n in nodes:
        (dev / f"davinci{n}").touch()
    env = {} if visible is None else {"ASCEND_RT_VISIBLE_DEVICES": visible}
    assert devices.device_map(env, dev) == expected


def test_a_variable_naming_devices_the_host_lacks_is_refused(host_4_5):
    for n in range(2, 8):
        (host_4_5 / f"davinci{n}").unlink()
    with pytest.raises(
        devices.DeviceError,
        match=r"^ASCEND_RT_VISIBLE_DEVICES=4,5 names device 4, but this host has 2 NPU\(s\) "
        r"\(davinci0,davinci1\), i\.e\. devices 0\.\.1: list devices below 2",
    ):
        devices.physical_id(0)


def test_pool_hands_out_logical_ids_and_locks_physical_devices(host_4_5, tmp_path):
    """Another run holds physical 0..3: this one gets 4 and 5, as logical 0 and 1 that set_device takes."""
    others = DevicePool(range(4), tmp_path / "pool")
    held = [others.claim(timeout=0) for _ in range(4)]
    backend = npu.load()
    claims: list[Any] = []
    got = [_device_id(Settings(), role, backend, claims) for role in ("p0", "d0")]
    assert got == [0, 1]
    for device_id in got:
        backend.set_device(device_id)  # the honest fake refuses anything but 0 and 1 here
    assert sorted(c.device_id for c in claims) == [4, 5]  # the locks are the physical devices'
    with pytest.raises(DevicePoolError, match=r"no free NPU among \[4, 5\]"):
        DevicePool([4, 5], tmp_path / "pool").claim(timeout=0)
    for claim in claims + held:
        claim.release()


def test_rank_table_and_hccn_tool_get_physical_ids(host_4_5, fake_hccn, fake_npu_stack, store):
    fake_hccn.ip = dict(IPS)
    fake_hccn.install()
    settings = Settings(local_host_ip=NIC)
    p, d = node(store, "p0", 0, settings), node(store, "d0", 1, settings)
    assert link_both(p, d) == {}
    inits = [c[1]["ge.exec.deviceId"] for c in fake_npu_stack.calls if c[0] == "init"]
    assert inits == ["0", "1"]  # LLMConfig.device_id: logical, as set_device
    tables = {c[3] for c in fake_npu_stack.calls if c[0] == "link"}
    assert len(tables) == 1, "both members must pass the same rank table"
    (server,) = json.loads(tables.pop())["server_list"]
    assert server["host_ip"] == NIC
    assert server["device"] == [
        {"device_id": "4", "device_ip": IPS[4], "rank_id": "0"},
        {"device_id": "5", "device_ip": IPS[5], "rank_id": "1"},
    ]
    assert sorted(fake_hccn.calls()) == ["-i 4 -ip -g", "-i 5 -ip -g"]


# -- point 5: no device IP until a rank table is built -------------------------------------------------


def test_init_and_one_sided_steps_need_no_hccn_tool(fake_npu_stack, no_hccn, store):
    p = node(store, "p0", 0, Settings(local_host_ip=NIC))
    published = p.kv.fetch("p0", "node")
    assert "device_ip" not in published and published["device_id"] == 0
    p.switch_role("DECODER")
    assert "device_ip" not in p.kv.fetch("p0", "node after switch_role")
    assert not p.kv.store.has(f"{p.kv.prefix}value/p0/{RANK_DEVICE}")


def test_the_device_ip_is_looked_up_where_the_rank_table_is_built(fake_npu_stack, no_hccn, store):
    settings = Settings(local_host_ip=NIC)
    p, d = node(store, "p0", 0, settings), node(store, "d0", 1, settings)
    errors = link_both(p, d)
    assert set(errors) == {"p0", "d0"}
    for exc in errors.values():
        assert isinstance(exc, devices.DeviceError)
        assert str(exc).startswith("hccn_tool not found on PATH")
    assert p.kv.current_step == "rank table"
    assert not [c for c in fake_npu_stack.calls if c[0] == "link"]


def test_fake_hccn_tool_has_no_logical_ids(host_4_5, fake_hccn):
    """Kept honest: hccn_tool ignores ASCEND_RT_VISIBLE_DEVICES, so logical 0 is not a device it knows."""
    fake_hccn.ip = dict(IPS)
    fake_hccn.install()
    with pytest.raises(devices.DeviceError, match=r"hccn_tool -i 0 -ip -g failed \(exit 2\): dev_id is invalid"):
        devices.device_ip(0)
    assert devices.device_ip(devices.physical_id(0)) == IPS[4]


# -- point 7: no loopback in an npu rank table ---------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "source"),
    [
        (Settings(), r"the default, as there is no TCP rendezvous to take it from"),
        (
            Settings(rendezvous=Rendezvous("tcp", host="127.0.0.1", port=29999)),
            r"the address this host reaches the rendezvous tcp://127\.0\.0\.1:29999 from",
        ),
        (
            Settings(local_host_ip="127.0.0.2", sources={"local_host_ip": "the environment (KVTEST_LOCAL_HOST_IP)"}),
            r"the environment \(KVTEST_LOCAL_HOST_IP\)",
        ),
    ],
)
def test_loopback_host_ip_is_refused_for_a_two_sided_link_on_npu(
    fake_npu_stack, fake_hccn, store, settings, source
):
    fake_hccn.install()
    p = node(store, "p0", 0, settings)
    with pytest.raises(
        pytest.UsageError,
        match=rf"^kvtest: host IP 127\.0\.0\.[12] from {source} is a loopback address, which cannot go "
        r"into the rank table of a two-sided link on npu .*: pass --local-host-ip <this host's NIC address>",
    ):
        p.link(["d0"])
    assert fake_hccn.calls() == [] and not [c for c in fake_npu_stack.calls if c[0] == "link"]


def test_loopback_remote_host_ip_is_refused_too(fake_npu_stack, fake_hccn, store):
    fake_hccn.install()
    settings = Settings(local_host_ip=NIC, remote_host_ips=("127.0.0.1",))
    p, d = node(store, "p0", 0, settings), node(store, "d0", 1, settings)
    errors = link_both(p, d)
    assert set(errors) == {"p0", "d0"}
    assert all(isinstance(e, pytest.UsageError) for e in errors.values())
    assert "host IP 127.0.0.1 from --remote-host-ip for d0 is a loopback address" in str(errors["p0"])
