"""The environment of a command started by ``kvtest run`` on sim: shims first on the import path, a
fake ``hccn_tool`` first on ``PATH``, the store and the role the sim reads.

Nothing here touches the current process: :func:`shim_root` writes a folder and :func:`child_env`
returns a new mapping. That is what keeps the shims out of every other Python process.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from kvtest.backends.sim.control import NAMESPACE_VAR, ROLE_VAR, STORE_VAR

#: the shim packages (llm_datadist, torch_npu, torchair)
SHIMS_DIR = Path(__file__).resolve().parent / "shims"
SHIM_VERSION = "0.0.0+kvtest.shim"

_ENTRY_POINTS = "[torch.backends]\ntorch_npu = torch_npu:_autoload\n"
_METADATA = f"Metadata-Version: 2.1\nName: torch_npu\nVersion: {SHIM_VERSION}\nSummary: kvtest shim\n"


def shim_root(folder: Path) -> tuple[Path, Path]:
    """Write the parts that cannot live in the package into ``folder``: (site dir, bin dir).

    The site dir holds torch_npu's ``torch.backends`` entry point, so ``import torch`` loads the shim
    as it loads the real torch_npu. The bin dir holds ``hccn_tool`` run by this Python.
    """
    site = folder / "site"
    dist_info = site / "torch_npu-0.0.0.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text(_METADATA)
    (dist_info / "entry_points.txt").write_text(_ENTRY_POINTS)
    (dist_info / "top_level.txt").write_text("torch_npu\n")
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    tool = bin_dir / "hccn_tool"
    tool.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m kvtest.dropin.hccn_tool "$@"\n')
    tool.chmod(0o755)
    return site, bin_dir


def name_sim_role(role: str) -> None:
    """Under ``kvtest run``, a kvtest pytest process gives the sim its own role name.

    Without it, the roles a local-mode ``pytest`` starts would inherit the command's
    ``KVTEST_SIM_ROLE`` (all "p0"), and faults aimed at ``:d0`` would hit nobody.
    """
    if os.environ.get(STORE_VAR):
        os.environ[ROLE_VAR] = role


def _prepend(entry: str, value: str | None) -> str:
    return entry if not value else f"{entry}{os.pathsep}{value}"


def child_env(
    base: Mapping[str, str],
    folder: Path,
    store_url: str,
    namespace: str,
    role: str,
    first: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """``base`` plus what a command needs to run on the sim through the shims.

    ``first`` (``kvtest run --backend upstream``) puts its ``PYTHONPATH`` before the shims, so the real
    llm_datadist built by ``kvtest upstream build`` shadows the shim of the same name while torch_npu,
    torchair and hccn_tool stay kvtest's; its other variables (our HCCL transport's) are set as given.
    """
    site, bin_dir = shim_root(folder)
    env = dict(base)
    # kvtest itself must stay importable from the shims (it is, when installed; PYTHONPATH keeps a checkout)
    kvtest_root = str(Path(__file__).resolve().parents[2])
    path = f"{SHIMS_DIR}{os.pathsep}{site}{os.pathsep}{kvtest_root}"
    extra = dict(first or {})
    if "PYTHONPATH" in extra:
        path = f"{extra.pop('PYTHONPATH')}{os.pathsep}{path}"
    env.update(extra)
    env["PYTHONPATH"] = _prepend(path, base.get("PYTHONPATH"))
    env["PATH"] = _prepend(str(bin_dir), base.get("PATH"))
    env[STORE_VAR] = store_url
    env[NAMESPACE_VAR] = namespace
    env[ROLE_VAR] = role
    # the shim torch_npu loads through torch's device-backend autoload, which kvtest would otherwise
    # switch off when it sees a torch_npu without CANN's libraries (kvtest.host.torchenv)
    env["TORCH_DEVICE_BACKEND_AUTOLOAD"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env
