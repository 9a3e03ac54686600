"""The environment fingerprint recorded with every result: what ran, on which stack.

Everything comes from files and package metadata: no subprocess, no import of ``torch_npu`` or
``llm_datadist`` (either may be broken, and importing them is slow). A fact that cannot be read is
``"absent"``, never an error.

Where the Ascend facts come from:

- CANN: ``<arch>-linux/ascend_toolkit_install.info`` (its ``version=`` line), else ``version.cfg``,
  under the first of ``ASCEND_TOOLKIT_HOME``, ``ASCEND_HOME_PATH`` (both set by CANN's
  ``set_env.sh``), ``<root>/ascend-toolkit/latest``, ``<root>/cann``, ``<root>/cann-<version>``;
- driver and firmware: ``<root>/driver/version.info`` and ``<root>/firmware/version.info``;

where ``<root>`` is ``KVTEST_ASCEND_ROOT`` or ``/usr/local/Ascend``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from kvtest.host.devices import ascend_root

__all__ = [
    "ABSENT",
    "cann_home",
    "cann_version",
    "driver_version",
    "fingerprint",
    "firmware_version",
    "kvtest_version",
    "package_version",
]

ABSENT = "absent"

_RUNNING_VERSION = re.compile(r"^\w*running_version\s*=\s*\[(?:[^:\]]*:)?([^\]]+)\]", re.MULTILINE)


def _read_key(path: Path, key: str) -> str | None:
    """The value of ``key=value`` in an install-info file (key matched case-insensitively)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip().lower() == key.lower() and value.strip():
            return value.strip()
    return None


def _cann_candidates(env: Mapping[str, str]) -> list[Path]:
    root = ascend_root(env)
    candidates = [Path(env[name]) for name in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH") if env.get(name)]
    candidates += [root / "ascend-toolkit" / "latest", root / "cann"]
    try:
        candidates += sorted(root.glob("cann-*"), reverse=True)
    except OSError:
        pass
    return candidates


def _toolkit_version(home: Path) -> str | None:
    try:
        infos = sorted(home.glob("*-linux/ascend_toolkit_install.info"))
    except OSError:
        infos = []
    for info in infos:
        version = _read_key(info, "version")
        if version:
            return version
    try:
        match = _RUNNING_VERSION.search((home / "version.cfg").read_text(errors="replace"))
    except OSError:
        return None
    return match.group(1).strip() if match else None


def cann_home(env: Mapping[str, str] | None = None) -> Path | None:
    """The CANN toolkit directory whose version :func:`cann_version` reports, if any."""
    env = os.environ if env is None else env
    for home in _cann_candidates(env):
        if _toolkit_version(home):
            return home
    return None


def cann_version(env: Mapping[str, str] | None = None) -> str:
    """The installed CANN toolkit version, e.g. ``8.0.RC3``, or ``"absent"``."""
    env = os.environ if env is None else env
    home = cann_home(env)
    return (_toolkit_version(home) if home else None) or ABSENT


def driver_version(env: Mapping[str, str] | None = None) -> str:
    """The Ascend driver version (``driver/version.info``), or ``"absent"``."""
    return _read_key(ascend_root(env) / "driver" / "version.info", "version") or ABSENT


def firmware_version(env: Mapping[str, str] | None = None) -> str:
    """The NPU firmware version (``firmware/version.info``), or ``"absent"``."""
    return _read_key(ascend_root(env) / "firmware" / "version.info", "version") or ABSENT


def package_version(*names: str) -> str:
    """The installed version of the first distribution in ``names`` that has metadata, or ``"absent"``."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ABSENT


def _module_present(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _llm_datadist_version(cann: str) -> str:
    version = package_version("llm_datadist", "llm-datadist")
    if version != ABSENT or not _module_present("llm_datadist"):
        return version
    # CANN ships the package without distribution metadata: its version is the toolkit's
    return f"CANN {cann}" if cann != ABSENT else "unversioned"


def kvtest_version() -> str:
    """The installed kvtest's version (package metadata; ``kvtest.__version__`` reads the same)."""
    return package_version("kvtest")


def _joined(values: Sequence[object] | None) -> str:
    return ",".join(str(v) for v in values) if values else ABSENT


def fingerprint(
    backend: str, device_ids: list[int] | None = None, device_ips: list[str] | None = None
) -> dict[str, str]:
    """Facts that identify the stack a result was measured on; every value a string.

    :param backend: ``"npu"`` or ``"sim"``.
    :param device_ids: the devices this process used, when known.
    :param device_ips: their device IPs, when known.
    """
    cann = cann_version()
    home = cann_home()
    return {
        "backend": backend,
        "kvtest": kvtest_version(),
        "python": platform.python_version(),
        "host": socket.gethostname() or ABSENT,
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "torch": package_version("torch"),
        "torch_npu": package_version("torch-npu", "torch_npu"),
        "llm_datadist": _llm_datadist_version(cann),
        "nixl": package_version("nixl", "nixl-cu12", "nixl_cu12", "nixl-cu13"),
        "cann": cann,
        "cann_home": str(home.resolve()) if home else ABSENT,
        "driver": driver_version(),
        "firmware": firmware_version(),
        "device_ids": _joined(device_ids),
        "device_ips": _joined(device_ips),
    }
