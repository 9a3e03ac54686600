"""``torch.npu`` on CPU for programs run under ``kvtest run`` on sim: devices are ids, memory is host memory.

What real torch_npu gives a program and this stand-in keeps: ``torch.npu.set_device`` /
``current_device`` / ``device_count`` / ``is_available`` / ``synchronize`` / ``Event`` / ``device``,
``Tensor.npu()`` (a copy, as a host-to-device copy is), and the device nodes the samples list
(``os.listdir("/dev")`` shows ``davinciN`` for each shim device).
Tensors stay CPU tensors: code that checks ``tensor.device.type == "npu"`` sees ``cpu``, and
``torch.device("npu:0")`` does not parse (registering "npu" as torch's PrivateUse1 backend, as torch_npu
does, makes torch.distributed look for an accelerator that is not there).

Device ids follow the real driver: ``KVTEST_SHIM_DEVICES`` lists the *physical* ids the host has
(default ``0..7``), ``ASCEND_RT_VISIBLE_DEVICES`` picks and renumbers them into *logical* ids, which
``set_device`` takes.
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from kvtest.dropin.shimdevices import logical_devices, physical_devices

DEVICE_NAME = "Ascend910B3 (kvtest shim, CPU memory)"


_state = {"device": 0}


def _index(device: Any) -> int:
    if device is None:
        return _state["device"]
    if isinstance(device, torch.device):
        return device.index if device.index is not None else _state["device"]
    if isinstance(device, str):
        head, _, index = device.partition(":")
        if head != "npu" or (index and not index.isdigit()):
            raise RuntimeError(f"Invalid device string: '{device}'")
        return int(index) if index else _state["device"]
    if isinstance(device, int) and not isinstance(device, bool):
        return device
    raise TypeError(f"device must be an int, str or torch.device, got {type(device).__name__}")


def device_count() -> int:
    return len(logical_devices())


def is_available() -> bool:
    return device_count() > 0


def set_device(device: Any) -> None:
    index = _index(device)
    count = device_count()
    if not 0 <= index < count:
        raise RuntimeError(f"Invalid device ID: {index}, the number of visible devices is {count}")
    _state["device"] = index


def current_device() -> int:
    return _state["device"]


def synchronize(device: Any = None) -> None:
    """Nothing is queued on CPU: every copy has finished when it returns."""


def empty_cache() -> None:
    """Nothing is cached."""


def get_device_name(device: Any = None) -> str:
    return DEVICE_NAME


@contextmanager
def device(index: Any) -> Iterator[None]:
    previous = _state["device"]
    set_device(index)
    try:
        yield
    finally:
        _state["device"] = previous


class Event:
    """``torch.npu.Event``: CPU work is done when issued, so an event is complete once recorded."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False) -> None:
        self.recorded = False

    def record(self, stream: Any = None) -> None:
        self.recorded = True

    def wait(self, stream: Any = None) -> None:
        """Already complete."""

    def synchronize(self) -> None:
        """Already complete."""

    def query(self) -> bool:
        return True


class Stream:
    """``torch.npu.Stream``: one implicit CPU stream."""

    def __init__(self, device: Any = None, priority: int = 0) -> None:
        self.device = device

    def synchronize(self) -> None:
        """Nothing is queued."""

    def wait_event(self, event: Event) -> None:
        """Events are complete when recorded."""

    def wait_stream(self, stream: Stream) -> None:
        """Nothing is queued."""


def current_stream(device: Any = None) -> Stream:
    return Stream(device)


def _tensor_npu(self: torch.Tensor, device: Any = None, non_blocking: bool = False, **_: Any) -> torch.Tensor:
    """``Tensor.npu()``: a contiguous copy that the sim counts as device memory (so it registers as
    ``Placement.DEVICE``), as a host-to-device copy is."""
    if device is not None:
        index = _index(device)
        if not 0 <= index < device_count():
            raise RuntimeError(
                f"Invalid device ID: {index}, the number of visible devices is {device_count()}"
            )
    from kvtest.backends.sim.device import to_device

    return to_device(self)


_real_listdir = os.listdir


def _listdir(path: Any = ".") -> list[Any]:
    names = _real_listdir(path)
    try:
        is_dev = os.path.abspath(os.fspath(path)) in ("/dev", b"/dev")
    except TypeError:  # a file descriptor
        return names
    if not is_dev:
        return names
    fake = [f"davinci{n}" for n in physical_devices() if f"davinci{n}" not in names]
    if isinstance(path, bytes):
        return names + [f.encode() for f in fake]
    return names + fake


def _module() -> types.ModuleType:
    module = types.ModuleType("torch.npu", __doc__)
    for name in (
        "device_count",
        "is_available",
        "set_device",
        "current_device",
        "synchronize",
        "empty_cache",
        "get_device_name",
        "device",
        "Event",
        "Stream",
        "current_stream",
    ):
        setattr(module, name, globals()[name])
    return module


_installed: types.ModuleType | None = None


def install() -> types.ModuleType:
    """Give this process ``torch.npu``, ``Tensor.npu`` and the ``/dev/davinciN`` listing; idempotent."""
    global _installed
    if _installed is not None:
        return _installed
    module = _module()
    torch.npu = module  # type: ignore[attr-defined]
    torch.Tensor.npu = _tensor_npu  # type: ignore[attr-defined]
    os.listdir = _listdir
    _installed = module
    return module
