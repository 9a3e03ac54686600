"""kvtest doctor: local table, verdicts, exit codes, and the two-sided fact exchange."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kvtest import doctor

ROOT = Path(__file__).resolve().parents[3]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kvtest doctor")
    doctor.add_arguments(parser)
    return parser.parse_args(list(argv))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_json(capsys, *argv: str) -> tuple[int, dict[str, dict[str, str]], dict]:
    code = doctor.run(parse("--json", *argv))
    report = json.loads(capsys.readouterr().out)
    return code, {c["name"]: c for c in report["checks"]}, report


@pytest.fixture
def quiet_env(monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("HCCL_INTRA_ROCE_ENABLE", "1")
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES", raising=False)


def test_this_machine_sim_usable_npu_not(capsys, no_npu_stack, ascend_root, quiet_env):
    pytest.importorskip("nixl_cu12")
    code, checks, report = run_json(capsys)
    assert code == 0
    assert checks["backend sim"]["status"] == "ok"
    assert checks["backend sim"]["detail"].startswith("nixl_cu12 ")
    assert checks["backend npu"]["status"] == "warn"
    assert checks["backend npu"]["detail"].startswith(
        "unusable: llm_datadist is not importable: it ships with CANN"
    )
    assert checks["backend npu"]["fix"].startswith("source ")
    assert checks["peer"]["status"] == "skip"
    assert report["failed"] == 0


def test_cli_entry_point_prints_the_table(no_npu_stack, ascend_root, quiet_env, capsys):
    pytest.importorskip("nixl_cu12")
    from kvtest.cli import main

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("kvtest doctor on ")
    assert "backend npu" in out and "fix: source " in out
    assert out.rstrip().endswith(": ready")


def test_npu_required_but_missing_fails(capsys, no_npu_stack, ascend_root, fake_dev, quiet_env):
    code, checks, _ = run_json(capsys, "--backend", "npu")
    assert code == 1
    assert checks["backend npu"]["status"] == "fail"
    assert checks["backend npu"]["detail"].startswith("unusable: llm_datadist is not importable")


def test_npu_host_all_good(capsys, fake_npu_stack, fake_hccn, fake_dev, quiet_env):
    fake_hccn.install()
    code, checks, report = run_json(capsys, "--backend", "npu", "--device-id", "1")
    assert code == 0, checks
    assert checks["backend npu"]["detail"] == "llm_datadist and torch_npu import, 2 NPU visible"
    assert checks["devices"]["detail"] == "using npu 1 (physical 1); visible: 0,1"
    assert checks["device ip npu1"] == {
        "name": "device ip npu1",
        "status": "ok",
        "detail": "192.168.1.2",
        "fix": "",
    }
    assert checks["tls"]["detail"] == "this host: off (npu 1)"
    assert report["facts"]["device_ips"] == {"1": "192.168.1.2"}


def test_all_visible_devices_and_mixed_tls(capsys, fake_npu_stack, fake_hccn, fake_dev, quiet_env):
    fake_hccn.tls = {0: 0, 1: 1}
    fake_hccn.install()
    code, checks, _ = run_json(capsys)
    assert code == 1
    assert set(checks) >= {"device ip npu0", "device ip npu1"}
    assert checks["tls"]["status"] == "fail"
    assert "devices with different TLS settings cannot link" in checks["tls"]["detail"]
    assert "hccn_tool -i N -tls -s enable 0" in checks["tls"]["fix"]


@pytest.mark.parametrize(
    ("setup", "name", "detail"),
    [
        ("malformed", "device ip npu0", r"printed no valid 'ipaddr:' line"),
        ("no-ip", "device ip npu0", r"device 0 has no IP configured"),
        ("missing", "hccn_tool", r"hccn_tool not found on PATH"),
        ("bad-tls", "tls", r"printed no 'tls switch\[...\]'"),
    ],
)
def test_device_failures_fail_the_run(
    capsys, fake_npu_stack, fake_hccn, fake_dev, quiet_env, monkeypatch, setup, name, detail
):
    import re

    if setup == "malformed":
        fake_hccn.raw_ip[0] = "garbage"
    elif setup == "no-ip":
        fake_hccn.raw_ip[0] = "ipaddr:"
    elif setup == "bad-tls":
        fake_hccn.raw_tls[0] = "oops"
    fake_hccn.install()
    if setup == "missing":
        monkeypatch.setenv("PATH", "/nonexistent")
    code, checks, _ = run_json(capsys, "--device-id", "0")
    assert code == 1
    assert checks[name]["status"] == "fail"
    assert re.search(detail, checks[name]["detail"])
    assert checks[name]["fix"]


def test_requested_device_not_visible(capsys, fake_npu_stack, fake_hccn, fake_dev, quiet_env):
    fake_hccn.install()
    code, checks, _ = run_json(capsys, "--device-id", "5")
    assert code == 1
    assert checks["devices"]["detail"] == (
        "device 5 is not visible: this host has 2 NPU(s), logical ids 0..1 (/dev: davinci0,davinci1); pick one of those"
    )


def test_device_failures_are_warnings_when_npu_is_not_used(
    capsys, no_npu_stack, fake_hccn, fake_dev, quiet_env
):
    pytest.importorskip("nixl_cu12")
    fake_hccn.raw_ip[0] = "garbage"
    fake_hccn.install()
    code, checks, _ = run_json(capsys, "--backend", "sim", "--device-id", "0")
    assert code == 0
    assert checks["device ip npu0"]["status"] == "warn"


def test_text_table_shows_fix_under_failure(capsys, fake_npu_stack, fake_hccn, fake_dev, quiet_env):
    fake_hccn.raw_ip[0] = "garbage"
    fake_hccn.install()
    assert doctor.run(parse("--device-id", "0")) == 1
    lines = capsys.readouterr().out.splitlines()
    index = next(i for i, line in enumerate(lines) if line.lstrip().startswith("device ip npu0"))
    assert " fail " in lines[index]
    assert lines[index + 1].strip().startswith("fix: check that hccn_tool matches the installed driver")
    assert lines[-1].endswith(": FAILED")


def _pair(listen_argv, peer_argv):
    """Run both sides' collect + exchange + peer_checks in one process (listener on a thread)."""
    results = {}

    def side(key, argv):
        args = parse(*argv)
        checks, mine, required = doctor.collect(args)
        try:
            theirs, reach = doctor.exchange(args, mine)
        except doctor.ExchangeError as exc:
            results[key] = [*checks, exc.check]
            return
        results[key] = [*checks, reach, *doctor.peer_checks(mine, theirs, required, args.timeout)]

    listener = threading.Thread(target=side, args=("listen", listen_argv))
    listener.start()
    side("peer", peer_argv)
    listener.join(timeout=30)
    assert not listener.is_alive()
    return {k: {c.name: c for c in v} for k, v in results.items()}


def test_pair_exchange_checks_tls_and_ping(fake_npu_stack, fake_hccn, fake_dev, quiet_env):
    fake_hccn.tls = {0: 0, 1: 1}
    fake_hccn.ping = {"192.168.1.1": 0, "192.168.1.2": 3}
    fake_hccn.install()
    port = free_port()
    both = _pair(
        ["--listen", str(port), "--device-id", "0", "--timeout", "20"],
        ["--peer", f"127.0.0.1:{port}", "--device-id", "1", "--timeout", "20"],
    )
    listen, peer = both["listen"], both["peer"]
    assert listen["rendezvous"].detail == f"listening on port {port}"
    assert peer["rendezvous"].detail == f"127.0.0.1:{port} reachable"
    for side in (listen, peer):
        assert side["tls agreement"].status == "fail"
        assert "devices with different TLS settings cannot link" in side["tls agreement"].detail
    # the listener (npu 0) pings the peer's device IP and gets through; the peer (npu 1) does not
    assert listen["ping npu0 -> 192.168.1.2"].status == "ok"
    lost = peer["ping npu1 -> 192.168.1.1"]
    assert lost.status == "fail"
    assert lost.detail == "0/3 replies: the device network does not reach 192.168.1.1"
    assert "-i 1 -ping -g address 192.168.1.1" in fake_hccn.calls()


def test_pair_agrees(fake_npu_stack, fake_hccn, fake_dev, quiet_env):
    fake_hccn.install()
    port = free_port()
    both = _pair(
        ["--listen", str(port), "--device-id", "0", "--timeout", "20"],
        ["--peer", f"127.0.0.1:{port}", "--device-id", "1", "--timeout", "20"],
    )
    for side in both.values():
        assert [c.name for c in side.values() if c.failed] == []
        assert side["tls agreement"].status == "ok"
        assert side["tls agreement"].detail.startswith("this host: off (npu ")
        assert "; peer: off (npu " in side["tls agreement"].detail


def test_peer_unreachable(capsys, no_npu_stack, ascend_root, quiet_env):
    port = free_port()
    code, checks, _ = run_json(capsys, "--peer", f"127.0.0.1:{port}", "--timeout", "1")
    assert code == 1
    assert checks["rendezvous"]["detail"].startswith(f"127.0.0.1:{port} unreachable: ")
    assert checks["rendezvous"]["fix"].startswith(f"start kvtest doctor --listen {port} on 127.0.0.1 first")


def test_listener_without_peer_times_out(capsys, no_npu_stack, ascend_root, quiet_env):
    port = free_port()
    code, checks, _ = run_json(capsys, "--listen", str(port), "--timeout", "1")
    assert code == 1
    assert checks["peer"]["detail"].startswith("no answer for kvtest/doctor/peer within 1s")
    assert checks["peer"]["fix"].startswith("run kvtest doctor --peer ")


def test_two_doctor_processes(no_npu_stack, ascend_root, quiet_env, capsys):
    pytest.importorskip("nixl_cu12")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    listener = subprocess.Popen(
        [sys.executable, "-m", "kvtest.cli", "doctor", "--listen", str(port), "--timeout", "30", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        code, checks, report = run_json(capsys, "--peer", f"127.0.0.1:{port}", "--timeout", "30")
        out, err = listener.communicate(timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
    assert code == 0, checks
    assert listener.returncode == 0, err
    theirs = json.loads(out)
    assert report["peer"]["host"] == theirs["host"] == socket.gethostname()
    assert {c["name"]: c["status"] for c in theirs["checks"]}["rendezvous"] == "ok"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--peer", "nohost"], r"invalid peer 'nohost': expected HOST:PORT"),
        (["--peer", "h:99999"], r"invalid port 99999: expected 1\.\.65535"),
        (["--listen", "x"], r"invalid port 'x': expected an integer"),
        (["--timeout", "0"], r"invalid timeout 0: must be > 0 seconds"),
        (["--listen", "1", "--peer", "h:2"], r"not allowed with argument"),
    ],
)
def test_bad_arguments(argv, message, capsys):
    import re

    with pytest.raises(SystemExit):
        parse(*argv)
    assert re.search(message, capsys.readouterr().err)


def test_container_device_is_asked_by_its_physical_id(
    capsys, fake_npu_stack, fake_hccn, fake_dev, quiet_env, monkeypatch
):
    """A container given davinci4 and davinci5 with ASCEND_RT_VISIBLE_DEVICES=1: logical 0 is physical 5."""
    for name in ("davinci0", "davinci1"):
        (fake_dev / name).unlink()
    for name in ("davinci4", "davinci5"):
        (fake_dev / name).touch()
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "1")
    fake_hccn.ip = {4: "192.168.1.5", 5: "192.168.1.6"}
    fake_hccn.tls = {4: 0, 5: 0}
    fake_hccn.install()
    code, checks, _ = run_json(capsys, "--device-id", "0")
    assert checks["devices"]["detail"] == "using npu 0 (physical 5); visible: 4,5"
    assert checks["device ip npu5"]["detail"] == "192.168.1.6"
    code, checks, _ = run_json(capsys)
    assert checks["devices"]["detail"] == "using npu 0 (physical 5); visible: 4,5"
    assert fake_hccn.calls()[0] == "-i 5 -ip -g"
