"""The npu backend against fake llm_datadist / torch_npu modules and a fake hccn_tool."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from kvtest.backends import Backend, BackendUnavailable, npu

ROOT = Path(__file__).resolve().parents[3]


def _write_package(site: Path, name: str, body: str) -> None:
    pkg = site / name
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(body)


@pytest.fixture
def autoload_env(monkeypatch):
    monkeypatch.delenv("TORCH_DEVICE_BACKEND_AUTOLOAD", raising=False)


def test_load_builds_a_backend_on_the_real_modules(fake_npu_stack, ascend_root):
    ok, why = npu.probe()
    assert (ok, why) == (True, "llm_datadist and torch_npu import, 2 NPU visible")
    backend = npu.load()
    assert isinstance(backend, Backend)
    assert backend.name == "npu"
    assert backend.api is fake_npu_stack.llm_datadist


def test_device_helpers_call_torch_npu_and_torchair(fake_npu_stack, ascend_root):
    backend = npu.load()
    backend.bind(object(), "ns", "p0")  # type: ignore[arg-type]
    backend.set_device(1)
    host = torch.arange(6, dtype=torch.float16).reshape(2, 3)
    device = backend.to_device(host)
    assert torch.equal(device, host)
    views = backend.tensors_at((2, 3), torch.float16, [0x1000, 0x2000])
    assert [tuple(v.shape) for v in views] == [(2, 3), (2, 3)]
    assert torch.equal(backend.to_host(device), host)
    assert fake_npu_stack.calls == [
        ("set_device", 1),
        ("Tensor.npu", (2, 3)),
        ("create_npu_tensors", [2, 3], torch.float16, [0x1000, 0x2000]),
    ]


def test_a_device_tensor_is_written_on_the_host_and_copied(fake_npu_stack, ascend_root):
    backend = npu.load()
    backend.set_device(0)
    written = []

    def write(host: torch.Tensor) -> None:
        written.append(host.device.type)
        host.copy_(torch.arange(6, dtype=torch.float16).reshape(2, 3))

    device = backend.make_on_device((2, 3), torch.float16, write)
    assert written == ["cpu"]
    assert torch.equal(device, torch.arange(6, dtype=torch.float16).reshape(2, 3))
    assert fake_npu_stack.calls == [("set_device", 0), ("Tensor.npu", (2, 3))]


def test_tensors_at_falls_back_to_standalone_torchair(fake_npu_stack, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu.dynamo.torchair.llm_datadist", None)
    standalone = types.ModuleType("torchair")
    air_llm = types.ModuleType("torchair.llm_datadist")
    air_llm.create_npu_tensors = lambda shape, dtype, addrs: [torch.ones(shape, dtype=dtype) for _ in addrs]  # type: ignore[attr-defined]
    standalone.llm_datadist = air_llm  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchair", standalone)
    monkeypatch.setitem(sys.modules, "torchair.llm_datadist", air_llm)
    (view,) = npu.load().tensors_at([4], torch.int8, [0x10])
    assert view.tolist() == [1, 1, 1, 1]


def test_tensors_at_without_torchair_says_so(fake_npu_stack, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu.dynamo.torchair.llm_datadist", None)
    monkeypatch.setitem(sys.modules, "torchair", None)
    with pytest.raises(
        BackendUnavailable,
        match=r"torchair's create_npu_tensors is not importable "
        r"\(torch_npu\.dynamo\.torchair\.llm_datadist: .*; "
        r"torchair\.llm_datadist: .*\): install a torch_npu that bundles torchair",
    ):
        npu.load().tensors_at([1], torch.int8, [1])


def test_device_ip_maps_logical_to_physical_and_caches(fake_npu_stack, fake_hccn, monkeypatch):
    fake_hccn.install()
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "1,0")
    backend = npu.load()
    backend.set_device(0)
    assert backend.device_ip(0) == "192.168.1.2"
    assert backend.device_ip(0) == "192.168.1.2"
    assert fake_hccn.calls() == ["-i 1 -ip -g"]
    facts = backend.describe()
    assert (facts["backend"], facts["device_ids"], facts["device_ips"]) == ("npu", "0", "192.168.1.2")
    assert facts["device_count"] == "2"


def test_describe_runs_no_subprocess(fake_npu_stack, no_hccn):
    backend = npu.load()
    backend.set_device(0)
    facts = backend.describe()
    assert facts["device_ids"] == "0"
    assert facts["device_ips"] == "absent"


def test_llm_datadist_missing(no_npu_stack, ascend_root):
    message = (
        r"^llm_datadist is not importable: it ships with CANN, not PyPI; "
        r"source .*/ascend-toolkit/set_env\.sh$"
    )
    with pytest.raises(BackendUnavailable, match=message):
        npu.load()
    ok, why = npu.probe()
    assert not ok
    assert re.match(message, why)


def test_set_env_hint_names_the_installed_script(no_npu_stack, ascend_root):
    script = ascend_root / "cann" / "set_env.sh"
    script.parent.mkdir()
    script.touch()
    with pytest.raises(BackendUnavailable, match=rf"; source {re.escape(str(script))}$"):
        npu.load()


def test_torch_npu_missing(fake_npu_stack, monkeypatch):
    monkeypatch.delitem(sys.modules, "torch_npu")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, p=None: None if n == "torch_npu" else real(n, p)
    )
    version = importlib.metadata.version("torch")
    pin = re.escape(f"pip install torch-npu=={version.split('+')[0]} (the release matching torch {version})")
    with pytest.raises(BackendUnavailable, match=rf"^torch_npu is not installed: {pin}$"):
        npu.load()


def test_torch_npu_without_cann(fake_npu_stack, tmp_path, monkeypatch, ascend_root, autoload_env):
    for name in [n for n in sys.modules if n.startswith("torch_npu")]:
        monkeypatch.delitem(sys.modules, name)
    _write_package(
        tmp_path / "site",
        "torch_npu",
        "raise ImportError('libhccl.so: cannot open shared object file: No such file or directory')\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(
        BackendUnavailable,
        match=r"^torch_npu failed to load: "
        r"libhccl\.so: cannot open shared object file: No such file or directory: "
        r"CANN is not installed or set_env\.sh not sourced \(source .*set_env\.sh\)$",
    ):
        npu.load()
    assert os.environ["TORCH_DEVICE_BACKEND_AUTOLOAD"] == "0"


def test_torch_npu_other_failure(fake_npu_stack, tmp_path, monkeypatch, autoload_env):
    for name in [n for n in sys.modules if n.startswith("torch_npu")]:
        monkeypatch.delitem(sys.modules, name)
    _write_package(tmp_path / "site", "torch_npu", "raise RuntimeError('torch version mismatch')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(
        BackendUnavailable, match=r"^torch_npu failed to load: torch version mismatch: check that"
    ):
        npu.load()


def test_no_npu_visible(fake_npu_stack, fake_dev, monkeypatch):
    fake_npu_stack.device_count = 0
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "3")
    with pytest.raises(
        BackendUnavailable, match=r"^no NPU visible \(ASCEND_RT_VISIBLE_DEVICES=3, /dev: davinci0,davinci1\)"
    ):
        npu.load()
    assert npu.probe()[0] is False


def test_probe_imports_nothing_when_llm_datadist_is_missing(tmp_path, monkeypatch, ascend_root):
    _write_package(tmp_path / "site", "torch_npu", "raise AssertionError('probe imported torch_npu')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in ("torch_npu", "llm_datadist"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    ok, why = npu.probe()
    assert not ok and why.startswith("llm_datadist is not importable")
    assert "torch_npu" not in sys.modules


def test_protect_torch_import(fake_npu_stack, tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")  # as if torch were not imported yet; restored after
    env: dict[str, str] = {}
    assert npu.protect_torch_import(env) is not None
    assert env == {"TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}
    user = {"TORCH_DEVICE_BACKEND_AUTOLOAD": "1"}
    assert npu.protect_torch_import(user) is None and user["TORCH_DEVICE_BACKEND_AUTOLOAD"] == "1"
    (tmp_path / "lib64").mkdir()
    (tmp_path / "lib64" / "libhccl.so").touch()
    cann_env = {"LD_LIBRARY_PATH": f"/nowhere:{tmp_path / 'lib64'}"}
    assert npu.protect_torch_import(cann_env) is None and "TORCH_DEVICE_BACKEND_AUTOLOAD" not in cann_env


def test_protect_torch_import_is_a_no_op_once_torch_is_imported(fake_npu_stack):
    env: dict[str, str] = {}
    assert npu.protect_torch_import(env) is None and env == {}


def _broken_torch_npu_site(site: Path) -> None:
    """A torch_npu installed without CANN, registered for torch's device-backend autoload."""
    _write_package(
        site,
        "torch_npu",
        "raise ImportError('libhccl.so: cannot open shared object file: No such file or directory')\n",
    )
    dist = site / "torch_npu-2.5.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torch_npu\nVersion: 2.5.1\n")
    (dist / "entry_points.txt").write_text("[torch.backends]\ntorch_npu = torch_npu:_autoload\n")


@pytest.mark.full
def test_broken_torch_npu_does_not_break_import_torch(tmp_path):
    site = tmp_path / "site"
    _broken_torch_npu_site(site)
    env = {
        k: v for k, v in os.environ.items() if k not in ("TORCH_DEVICE_BACKEND_AUTOLOAD", "LD_LIBRARY_PATH")
    }
    env["PYTHONPATH"] = f"{site}{os.pathsep}{ROOT}"
    bare = subprocess.run(
        [sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True, timeout=120
    )
    assert bare.returncode != 0 and "TORCH_DEVICE_BACKEND_AUTOLOAD" in bare.stderr  # the pitfall is real
    # importing kvtest (as pytest does when it loads the plugin) applies the guard before torch loads
    guarded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, kvtest; print(os.environ.get('TORCH_DEVICE_BACKEND_AUTOLOAD')); "
            "import torch; from kvtest.backends import npu; print(npu.probe())",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert guarded.returncode == 0, guarded.stderr
    assert guarded.stdout.splitlines()[0] == "0"
    assert "(False, 'llm_datadist is not importable" in guarded.stdout
