"""Keeping a torch_npu installed without CANN from breaking ``import torch``.

torch >= 2.5 auto-loads installed device backends from ``import torch``, so a ``torch_npu`` installed
without CANN (``libhccl.so`` missing) makes ``import torch`` itself fail, sim runs included.
:func:`protect_torch_import` turns the autoload off in exactly that case. Standard library only: the
package's ``__init__`` runs it before anything imports torch.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["AUTOLOAD_VAR", "installed", "protect_torch_import"]

AUTOLOAD_VAR = "TORCH_DEVICE_BACKEND_AUTOLOAD"


def installed(name: str) -> bool:
    """Whether ``name`` can be found, without importing it."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _cann_libs_on_path(env: Mapping[str, str]) -> bool:
    """Whether ``libhccl.so`` is on ``LD_LIBRARY_PATH``, as CANN's ``set_env.sh`` arranges."""
    for entry in env.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        if entry and (Path(entry) / "libhccl.so").exists():
            return True
    return False


def protect_torch_import(env: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """Keep a broken ``torch_npu`` from breaking ``import torch``; call before torch is imported.

    When torch is not imported yet, ``torch_npu`` is installed and CANN's libraries are not on
    ``LD_LIBRARY_PATH``, sets ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` (unless the user set it) and
    returns why; otherwise changes nothing and returns None.
    """
    env = os.environ if env is None else env
    if "torch" in sys.modules or AUTOLOAD_VAR in env or not installed("torch_npu"):
        return None
    if _cann_libs_on_path(env):
        return None
    env[AUTOLOAD_VAR] = "0"
    return f"{AUTOLOAD_VAR}=0: torch_npu is installed but CANN's libhccl.so is not on LD_LIBRARY_PATH"


