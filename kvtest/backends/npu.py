"""The real backend: ``llm_datadist`` (ships with CANN) on Ascend NPUs through ``torch_npu``.

Nothing here is imported until the backend is chosen, and nothing is faked: :func:`load` imports
the real modules or raises :class:`BackendUnavailable` with a one-line reason and fix.

Why the care around ``torch_npu``: torch >= 2.5 auto-loads installed device backends from
``import torch``, so a ``torch_npu`` installed without CANN (``libhccl.so`` missing) makes
``import torch`` itself fail, sim runs included. :func:`protect_torch_import` turns the autoload
off (``TORCH_DEVICE_BACKEND_AUTOLOAD=0``) in exactly that case, before torch is imported; the npu
path imports ``torch_npu`` explicitly, so it never needs the autoload.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from kvtest.backends.protocol import BackendUnavailable
from kvtest.host import devices
from kvtest.host.torchenv import AUTOLOAD_VAR, protect_torch_import
from kvtest.host.torchenv import installed as _installed

if TYPE_CHECKING:
    import torch
    from torch.distributed.distributed_c10d import Store

__all__ = ["NpuBackend", "load", "probe", "protect_torch_import", "set_env_hint"]

#: where torchair's ``create_npu_tensors`` lives: inside torch_npu, or the standalone torchair
TORCHAIR_MODULES = ("torch_npu.dynamo.torchair.llm_datadist", "torchair.llm_datadist")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {' '.join(str(cause).split())}"
    return text or type(exc).__name__


def set_env_hint(env: Mapping[str, str] | None = None) -> str:
    """The ``set_env.sh`` a user should source: the installed one if found, else the default path."""
    root = devices.ascend_root(env)
    candidates = [root / "ascend-toolkit" / "set_env.sh", root / "cann" / "set_env.sh"]
    try:
        candidates += sorted(root.glob("cann-*/set_env.sh"), reverse=True)
    except OSError:
        pass
    for script in candidates:
        if script.is_file():
            return f"source {script}"
    return f"source {candidates[0]}"


def _torch_pin() -> str:
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "pip install torch torch-npu (matching releases)"
    base = version.split("+", 1)[0]
    return f"pip install torch-npu=={base} (the release matching torch {version})"


def _import_torch_npu() -> ModuleType:
    protect_torch_import()
    try:
        return importlib.import_module("torch_npu")
    except Exception as exc:  # ImportError, OSError, or torch's autoload RuntimeError
        # a failed import may have left torch half-loaded; keep the next `import torch` (sim) working
        os.environ.setdefault(AUTOLOAD_VAR, "0")
        reason = _one_line(exc)
        if ".so" in reason or "shared object" in reason or "libhccl" in reason or "libascend" in reason:
            raise BackendUnavailable(
                f"torch_npu failed to load: {reason}: CANN is not installed or set_env.sh not sourced "
                f"({set_env_hint()})"
            ) from exc
        raise BackendUnavailable(
            f"torch_npu failed to load: {reason}: check that torch_npu matches torch ({_torch_pin()})"
        ) from exc


def _visible_note() -> str:
    value = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
    nodes = devices.visible_devices()
    dev = ",".join(f"davinci{n}" for n in nodes) or "none"
    return f"ASCEND_RT_VISIBLE_DEVICES={value if value is not None else 'unset'}, /dev: {dev}"


def _load_modules() -> tuple[ModuleType, ModuleType, int]:
    """Import llm_datadist and torch_npu and count devices, or raise BackendUnavailable saying why."""
    hint = set_env_hint()
    if not _installed("llm_datadist"):
        raise BackendUnavailable(f"llm_datadist is not importable: it ships with CANN, not PyPI; {hint}")
    if not _installed("torch_npu"):
        raise BackendUnavailable(f"torch_npu is not installed: {_torch_pin()}")
    torch_npu = _import_torch_npu()
    try:
        api = importlib.import_module("llm_datadist")
    except Exception as exc:
        raise BackendUnavailable(
            f"llm_datadist failed to load: {_one_line(exc)}: CANN's libraries are not found; {hint}"
        ) from exc
    import torch

    npu: Any = getattr(torch, "npu", None) or getattr(torch_npu, "npu", None)
    try:
        count = int(npu.device_count()) if npu is not None else 0
    except Exception as exc:
        raise BackendUnavailable(f"no NPU visible: device_count() failed: {_one_line(exc)}") from exc
    if count <= 0:
        raise BackendUnavailable(f"no NPU visible ({_visible_note()}): check the driver with npu-smi info")
    return api, torch_npu, count


class NpuBackend:
    """Tests on real NPUs: ``api`` is the ``llm_datadist`` module, tensors live on ``npu:<id>``.

    Built by :func:`load`; one per process. :meth:`set_device` comes first, as in every sample.
    """

    name: str = "npu"

    def __init__(self, api: ModuleType, torch_npu: ModuleType, device_count: int) -> None:
        self.api = api
        self.device_count = device_count
        self._torch_npu = torch_npu
        self._device_id: int | None = None
        self._device_ips: dict[int, str] = {}
        self._create_npu_tensors: Callable[..., list[torch.Tensor]] | None = None

    def bind(self, store: Store, namespace: str, role: str) -> None:
        """Nothing to attach: llm_datadist has its own control plane."""

    def _npu(self) -> Any:
        import torch

        npu = getattr(torch, "npu", None)
        if npu is None:
            raise BackendUnavailable("torch.npu is missing although torch_npu imported: reinstall torch_npu")
        return npu

    def after_failure(self) -> None:
        """llm_datadist keeps nothing of a finalized instance."""

    def warm_up(self, role: str) -> None:
        """Nothing: an LLMDataDist's init needs its test's options and device."""

    def touch_ahead(self, device_bytes: int, first: bool, after: int = 0) -> None:
        """Nothing: device memory is the NPU's (no host pages to touch ahead)."""

    def touched_ahead(self, timeout_s: float) -> bool:
        """Nothing to wait for."""
        return True

    def set_device(self, device_id: int) -> None:
        """``torch.npu.set_device`` with the *logical* id, as every sample passes ``--device_id``."""
        self._npu().set_device(device_id)
        self._device_id = device_id

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = host.npu()  # type: ignore[attr-defined]  # torch_npu adds Tensor.npu
        return result

    def make_on_device(
        self, shape: Sequence[int], dtype: torch.dtype, write: Callable[[torch.Tensor], object]
    ) -> torch.Tensor:
        import torch

        host = torch.empty(list(shape), dtype=dtype)
        write(host)
        return self.to_device(host)

    def _creator(self) -> Callable[..., list[torch.Tensor]]:
        if self._create_npu_tensors is None:
            errors = []
            for module_name in TORCHAIR_MODULES:
                try:
                    module = importlib.import_module(module_name)
                except Exception as exc:
                    errors.append(f"{module_name}: {_one_line(exc)}")
                    continue
                create = getattr(module, "create_npu_tensors", None)
                if callable(create):
                    self._create_npu_tensors = create
                    break
                errors.append(f"{module_name} has no create_npu_tensors")
            else:
                raise BackendUnavailable(
                    "torchair's create_npu_tensors is not importable ("
                    + "; ".join(errors)
                    + "): install a torch_npu that bundles torchair (torch_npu.dynamo.torchair) "
                    "or pip install torchair"
                )
        assert self._create_npu_tensors is not None
        return self._create_npu_tensors

    def tensors_at(
        self, shape: Sequence[int], dtype: torch.dtype, addrs: Sequence[int]
    ) -> list[torch.Tensor]:
        return list(self._creator()(list(shape), dtype, list(addrs)))

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.cpu()

    def physical_id(self, device_id: int) -> int:
        """The physical id of logical ``device_id`` (see :mod:`kvtest.host.devices`)."""
        return devices.physical_id(device_id)

    def device_ip(self, device_id: int) -> str:
        """The device IP of *logical* device ``device_id``: ``hccn_tool -i <physical id> -ip -g``."""
        if device_id not in self._device_ips:
            self._device_ips[device_id] = devices.device_ip(self.physical_id(device_id))
        return self._device_ips[device_id]

    def describe(self) -> dict[str, str]:
        from kvtest.host.fingerprint import fingerprint

        ids = [self._device_id] if self._device_id is not None else sorted(self._device_ips)
        ips = [self._device_ips[i] for i in ids if i in self._device_ips]
        facts = fingerprint(self.name, ids or None, ips or None)
        facts["device_count"] = str(self.device_count)
        return facts


def probe() -> tuple[bool, str]:
    """Whether the npu backend can run here, cheaply, for ``--backend auto``; never raises.

    Nothing is imported unless both ``llm_datadist`` and ``torch_npu`` can be found.
    """
    try:
        _, _, count = _load_modules()
    except BackendUnavailable as exc:
        return False, str(exc)
    return True, f"llm_datadist and torch_npu import, {count} NPU visible"


def load() -> NpuBackend:
    """The npu backend, or :class:`BackendUnavailable` with a one-line reason and fix."""
    api, torch_npu, count = _load_modules()
    return NpuBackend(api, torch_npu, count)
