"""kvtest.host.devices against fake hccn_tool executables and a fake /dev."""

from __future__ import annotations

import pytest

from kvtest.host import devices
from kvtest.host.devices import DeviceError


def test_visible_devices_lists_davinci_nodes_only(fake_dev):
    (fake_dev / "davinci10").touch()
    (fake_dev / "davinci2x").touch()
    assert devices.visible_devices() == [0, 1, 10]
    assert devices.visible_devices(fake_dev / "missing") == []


@pytest.mark.parametrize(
    ("env", "logical", "physical"),
    [({}, 3, 3), ({"ASCEND_RT_VISIBLE_DEVICES": "4,5"}, 1, 5), ({"ASCEND_RT_VISIBLE_DEVICES": " 6 "}, 0, 6)],
)
def test_physical_id_maps_through_visible_devices(env, logical, physical):
    assert devices.physical_id(logical, env) == physical


def test_physical_id_rejects_hidden_and_malformed():
    with pytest.raises(
        DeviceError,
        match=r"device 2 is not visible: ASCEND_RT_VISIBLE_DEVICES=4,5 exposes logical ids 0\.\.1",
    ):
        devices.physical_id(2, {"ASCEND_RT_VISIBLE_DEVICES": "4,5"})
    with pytest.raises(DeviceError, match=r"ASCEND_RT_VISIBLE_DEVICES='0,x' is malformed"):
        devices.physical_id(0, {"ASCEND_RT_VISIBLE_DEVICES": "0,x"})


def test_device_ip_good(fake_hccn):
    fake_hccn.install()
    assert devices.device_ip(0) == "192.168.1.1"
    assert devices.device_ip(1) == "192.168.1.2"
    assert fake_hccn.calls() == ["-i 0 -ip -g", "-i 1 -ip -g"]


def test_hccn_tool_missing(no_hccn):
    with pytest.raises(
        DeviceError,
        match=r"hccn_tool not found on PATH nor at .*/driver/tools/hccn_tool: "
        r"it ships with the Ascend driver",
    ):
        devices.device_ip(0)


def test_hccn_tool_found_under_driver_install(tmp_path, fake_hccn, ascend_root, monkeypatch):
    tools = ascend_root / "driver" / "tools"
    tools.mkdir(parents=True)
    fake_hccn.bin_dir = tools
    fake_hccn.install()
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert devices.find_hccn_tool() == str(tools / "hccn_tool")
    assert devices.device_ip(0) == "192.168.1.1"


def test_malformed_output(fake_hccn):
    fake_hccn.raw_ip[0] = "something unexpected\nmore"
    fake_hccn.install()
    with pytest.raises(
        DeviceError,
        match=r"hccn_tool -i 0 -ip -g printed no valid 'ipaddr:' line \(got 'something unexpected'\)",
    ):
        devices.device_ip(0)


def test_malformed_address(fake_hccn):
    fake_hccn.raw_ip[0] = "ipaddr:192.168.1"
    fake_hccn.install()
    with pytest.raises(DeviceError, match=r"printed no valid 'ipaddr:' line"):
        devices.device_ip(0)


@pytest.mark.parametrize(
    ("raw", "code"),
    [("ipaddr:\nnetmask:", 0), ("ipaddr:0.0.0.0", 0), ("ip address is not config", 1)],
    ids=["empty", "zero", "exit-1"],
)
def test_no_ip_configured(fake_hccn, raw, code):
    fake_hccn.raw_ip[1] = raw
    fake_hccn.ip_exit[1] = code
    fake_hccn.install()
    with pytest.raises(
        DeviceError,
        match=r"device 1 has no IP configured \(hccn_tool -i 1 -ip -g\): "
        r"configure one with hccn_tool -i 1 -ip -s address",
    ):
        devices.device_ip(1)


def test_tool_failure_names_command_and_exit(fake_hccn):
    fake_hccn.install()
    with pytest.raises(DeviceError, match=r"hccn_tool -i 7 -ip -g failed \(exit 2\): dev_id is invalid"):
        devices.device_ip(7)


def test_busy_tool_is_retried(fake_hccn):
    fake_hccn.busy_first = 1
    fake_hccn.install()
    assert devices.device_ip(0) == "192.168.1.1"
    assert len(fake_hccn.calls()) == 2


def test_hanging_tool_times_out(fake_hccn):
    fake_hccn.sleep = 5
    fake_hccn.install()
    with pytest.raises(DeviceError, match=r"hccn_tool -i 0 -ip -g did not answer within 0.3s"):
        devices.device_ip(0, timeout=0.3)


def test_ping_ok_and_lost(fake_hccn):
    fake_hccn.ping = {"192.168.2.1": 3, "192.168.9.9": 0}
    fake_hccn.install()
    good = devices.ping(0, "192.168.2.1")
    assert (good.ok, good.sent, good.received) == (True, 3, 3)
    lost = devices.ping(0, "192.168.9.9")
    assert (lost.ok, lost.sent, lost.received) == (False, 3, 0)
    assert fake_hccn.calls()[-1] == "-i 0 -ping -g address 192.168.9.9"


def test_ping_unreadable_output():
    with pytest.raises(
        DeviceError, match=r"-ping -g address 1.2.3.4 printed no packet counts \(got 'weird'\)"
    ):
        devices.parse_ping("weird", 0, "1.2.3.4")
    assert devices.parse_ping("recv seq=0,time=1ms\nrecv seq=1,time=1ms", 0, "x").received == 2


@pytest.mark.parametrize("on", [0, 1])
def test_tls_switch(fake_hccn, on):
    fake_hccn.tls = {0: on}
    fake_hccn.install()
    assert devices.tls_enabled(0) is bool(on)


def test_tls_unreadable(fake_hccn):
    fake_hccn.raw_tls[0] = "no certificate found"
    fake_hccn.install()
    with pytest.raises(
        DeviceError,
        match=r"hccn_tool -i 0 -tls -g printed no 'tls switch\[...\]' \(got 'no certificate found'\)",
    ):
        devices.tls_enabled(0)
