"""Fakes at the process boundary for the npu backend and the doctor.

- ``fake_hccn``: writes an ``hccn_tool`` executable (bash) into a directory put first on PATH; it
  answers ``-ip -g``, ``-tls -g`` and ``-ping -g address IP`` from a per-test table and logs its
  arguments.
- ``fake_npu_stack``: fake ``llm_datadist``, ``torch_npu`` (with torchair's ``create_npu_tensors``)
  and ``torch.npu`` inserted with monkeypatch; every call is recorded. Like the real runtime, it
  counts and accepts *logical* ids only: ``ASCEND_RT_VISIBLE_DEVICES`` narrows the host's
  ``device_count`` devices, and ``set_device`` / ``LLMDataDist.init`` refuse an id outside them.
  ``hccn_tool`` (``fake_hccn``) takes physical ids and ignores the variable, as the real one does.
- ``fake_dev``: a directory with ``davinciN`` nodes standing in for ``/dev``.
"""

from __future__ import annotations

import enum
import os
import shlex
import stat
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from kvtest.host import devices

GOOD_IPS = {0: "192.168.1.1", 1: "192.168.1.2"}


@dataclass
class FakeHccn:
    """Configure, then :meth:`install`. ``ip`` values: an address, "" (no IP), or raw output lines."""

    bin_dir: Path
    log: Path
    ip: dict[int, str] = field(default_factory=lambda: dict(GOOD_IPS))
    raw_ip: dict[int, str] = field(default_factory=dict)
    ip_exit: dict[int, int] = field(default_factory=dict)
    tls: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    raw_tls: dict[int, str] = field(default_factory=dict)
    #: address -> replies received out of 3 (absent: 3)
    ping: dict[str, int] = field(default_factory=dict)
    busy_first: int = 0
    sleep: float = 0.0

    @property
    def path(self) -> Path:
        return self.bin_dir / "hccn_tool"

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def install(self) -> FakeHccn:
        q = shlex.quote
        lines = [
            "#!/bin/bash",
            f'echo "$*" >> {q(str(self.log))}',
            f"sleep {self.sleep}" if self.sleep else ":",
        ]
        if self.busy_first:
            counter = q(str(self.log) + ".busy")
            lines += [
                f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}",
                f'if [ "$n" -lt {self.busy_first} ]; then',
                "  echo 'hccn_tool is busy, please try again'; exit 1",
                "fi",
            ]
        lines += ['dev="$2"; op="$3"', 'case "$op" in', "-ip)", '  case "$dev" in']
        for dev, ip in self.ip.items():
            body = self.raw_ip.get(dev, f"ipaddr:{ip}\nnetmask:255.255.255.0")
            lines.append(f"  {dev}) printf '%s\\n' {q(body)}; exit {self.ip_exit.get(dev, 0)};;")
        lines += ["  *) echo 'dev_id is invalid' >&2; exit 2;;", "  esac;;", "-tls)", '  case "$dev" in']
        for dev, on in self.tls.items():
            body = self.raw_tls.get(
                dev, f"dev_id:{dev}, tls switch[{on}](0:disable, 1:enable), tls alarm time threshold[60]days"
            )
            lines.append(f"  {dev}) printf '%s\\n' {q(body)};;")
        lines += [
            "  *) echo 'dev_id is invalid' >&2; exit 2;;",
            "  esac;;",
            "-ping)",
            '  addr="$6"',
            '  case "$addr" in',
        ]
        for addr, got in self.ping.items():
            rc = 0 if got else 1
            body = f"device $dev PING {addr}\n" + "".join(f"recv seq={i},time=0.05ms\n" for i in range(got))
            body += f"3 packets transmitted, {got} received, {100 * (3 - got) / 3:.2f}% packet loss"
            lines.append(f"  {q(addr)}) printf '%s\\n' \"{body}\"; exit {rc};;")
        lines += [
            '  *) printf \'device %s PING %s\\n\' "$dev" "$addr";'
            ' for i in 0 1 2; do echo "recv seq=$i,time=0.05ms"; done;'
            " echo '3 packets transmitted, 3 received, 0.00% packet loss';;",
            "  esac;;",
            '*) echo "unknown option $op" >&2; exit 2;;',
            "esac",
        ]
        self.path.write_text("\n".join(lines) + "\n")
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return self


@pytest.fixture
def ascend_root(tmp_path, monkeypatch):
    """An empty Ascend install root, so nothing from the real /usr/local/Ascend leaks in."""
    root = tmp_path / "Ascend"
    root.mkdir()
    monkeypatch.setenv("KVTEST_ASCEND_ROOT", str(root))
    for name in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH", "ASCEND_RT_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    return root


@pytest.fixture
def fake_hccn(tmp_path, monkeypatch, ascend_root):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    return FakeHccn(bin_dir=bin_dir, log=tmp_path / "hccn.log")


@pytest.fixture
def no_hccn(tmp_path, monkeypatch, ascend_root):
    """PATH without hccn_tool, and an Ascend root without the driver's copy."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture
def fake_dev(tmp_path, monkeypatch):
    """A stand-in for /dev with davinci0 and davinci1 (add more with ``fake_dev / 'davinciN'``)."""
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("davinci0", "davinci1", "davinci_manager", "null"):
        (dev / name).touch()
    monkeypatch.setattr(devices, "DEV_DIR", str(dev))
    return dev


@dataclass
class FakeNpuStack:
    calls: list[tuple[object, ...]] = field(default_factory=list)
    #: NPUs the runtime sees before ASCEND_RT_VISIBLE_DEVICES narrows them
    device_count: int = 2
    llm_datadist: types.ModuleType | None = None
    torch_npu: types.ModuleType | None = None

    def visible_count(self) -> int:
        """The runtime's device count: the variable's ids up to the first one the host lacks
        (CANN's ASCEND_RT_VISIBLE_DEVICES page: ids after an invalid one are ignored)."""
        value = os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "").strip()
        if not value:
            return self.device_count
        count = 0
        for part in value.split(","):
            if not part.strip().isdigit() or int(part) >= self.device_count:
                break
            count += 1
        return count

    def open_device(self, device_id: int) -> None:
        """aclrtSetDevice: a logical id below the visible count, else the runtime's 107001."""
        if not 0 <= device_id < self.visible_count():
            raise RuntimeError(
                f"NPU function error: c10_npu::SetDevice(device_id_), error code is 107001: invalid "
                f"device={device_id}, input visible devices:{self.visible_count()}"
            )


def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = None
    return module


@pytest.fixture
def fake_npu_stack(monkeypatch):
    """Fake llm_datadist + torch_npu (+ torchair inside it) + torch.npu, recording every call."""
    stack = FakeNpuStack()

    llm = _module("llm_datadist")

    class RegisterMemStatus(enum.Enum):  # v2/llm_types.py
        OK = 0
        PREPARING = 1
        FAILED = 2

    class LLMDataDist:
        """Records its calls; ``init`` opens ``ge.exec.deviceId`` as llm_datadist_v2.cc's
        ``aclrtSetDevice`` does; ``link`` succeeds at once."""

        def __init__(self, role: object, cluster_id: int) -> None:
            stack.calls.append(("LLMDataDist", role, cluster_id))

        def init(self, options: dict[str, str]) -> None:
            stack.open_device(int(options.get("ge.exec.deviceId", "0")))
            stack.calls.append(("init", dict(options)))

        def link(self, comm_name: str, cluster_rank_info: dict[int, int], rank_table: str) -> int:
            stack.calls.append(("link", comm_name, dict(cluster_rank_info), rank_table))
            return 1

        def query_register_mem_status(self, comm_id: int) -> RegisterMemStatus:
            return RegisterMemStatus.OK

        def unlink(self, comm_id: int) -> None:
            stack.calls.append(("unlink", comm_id))

        def switch_role(self, role: object, options: dict[str, str] | None = None) -> None:
            stack.calls.append(("switch_role", role, options))

        def finalize(self) -> None:
            stack.calls.append(("finalize",))

    llm.LLMDataDist = LLMDataDist  # type: ignore[attr-defined]
    llm.RegisterMemStatus = RegisterMemStatus  # type: ignore[attr-defined]

    def set_device(device_id: int) -> None:
        stack.open_device(device_id)
        stack.calls.append(("set_device", device_id))

    npu = types.SimpleNamespace(set_device=set_device, device_count=stack.visible_count)
    torch_npu = _module("torch_npu")
    torch_npu.npu = npu  # type: ignore[attr-defined]
    dynamo = _module("torch_npu.dynamo")
    torchair = _module("torch_npu.dynamo.torchair")
    air_llm = _module("torch_npu.dynamo.torchair.llm_datadist")

    def create_npu_tensors(shape: list[int], dtype: torch.dtype, addrs: list[int]) -> list[torch.Tensor]:
        stack.calls.append(("create_npu_tensors", list(shape), dtype, list(addrs)))
        return [torch.zeros(shape, dtype=dtype) for _ in addrs]

    air_llm.create_npu_tensors = create_npu_tensors  # type: ignore[attr-defined]
    torch_npu.dynamo = dynamo  # type: ignore[attr-defined]
    dynamo.torchair = torchair  # type: ignore[attr-defined]
    torchair.llm_datadist = air_llm  # type: ignore[attr-defined]

    def tensor_npu(self: torch.Tensor) -> torch.Tensor:
        stack.calls.append(("Tensor.npu", tuple(self.shape)))
        return self.clone()

    for name, module in {
        "llm_datadist": llm,
        "torch_npu": torch_npu,
        "torch_npu.dynamo": dynamo,
        "torch_npu.dynamo.torchair": torchair,
        "torch_npu.dynamo.torchair.llm_datadist": air_llm,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "torchair", raising=False)
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    monkeypatch.setattr(torch.Tensor, "npu", tensor_npu, raising=False)
    stack.llm_datadist = llm
    stack.torch_npu = torch_npu
    return stack


@pytest.fixture
def no_npu_stack(monkeypatch):
    """Neither llm_datadist nor torch_npu importable, whatever the machine has."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    hidden = ("llm_datadist", "torch_npu", "torchair")

    def find_spec(name: str, package: str | None = None):  # type: ignore[no-untyped-def]
        if name.split(".")[0] in hidden:
            return None
        return real_find_spec(name, package)

    for name in hidden:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture
def store():
    """An in-process TCPStore for a pair built with npu_pair.node."""
    from kvtest.run.rendezvous import open_store
    from kvtest.settings import Rendezvous

    raw, _ = open_store(Rendezvous("tcp", host="127.0.0.1", port=0), host=True, timeout=5)
    return raw
