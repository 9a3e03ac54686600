"""Our HCCL transport (``transport/hccl_transport.cc``), compiled into ``<key>/transport/<hash>/``.

Why ``process_vm_readv``/``process_vm_writev`` and not device memory in shared memory: the addresses
the real llm_datadist hands to HcclBatchGet/Put come from three allocators — the stub ``aclrtMalloc``
(``new uint8_t[]``, hixl ``tests/depends/ascendcl``), the tensors a program registers with
``register_cache`` (torch's CPU allocator under kvtest's torch_npu stand-in) and host caches for
``swap_blocks`` — and a shared mapping at one address in every process would have to own all three.
Reading and writing the peer's memory by pid moves exactly the bytes at the addresses the real code
computed, wherever they live, in one system call per batch, and a dead peer is an immediate ``ESRCH``
rather than a hang. The cost: same-host only, and the peer must allow it (same uid; the library calls
``prctl(PR_SET_PTRACER_ANY)`` for Yama's ptrace_scope=1), which is what a stubbed device can offer anyway.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from kvtest.upstream.cache import Entry
from kvtest.upstream.errors import UpstreamError

__all__ = ["ENV_DIR", "ENV_FAULT", "LIBRARY", "SOURCE", "ensure", "environment"]

SOURCE = Path(__file__).with_name("transport") / "hccl_transport.cc"
LIBRARY = "libkvtest_hccl.so"
ENV_DIR = "KVTEST_HCCL_DIR"  # where each process publishes its pid under its rank-table entry
ENV_FAULT = "KVTEST_HCCL_FAULT"  # flip|drop[:get|:put][:INDEX]


def _flags(entry: Entry) -> list[str]:
    import nlohmann_json  # type: ignore[import-untyped]  # the same headers the upstream build used (stage.third_party)

    json_include = Path(nlohmann_json.__file__).parent / "include"
    return [
        "-std=c++17",
        "-O2",
        "-fPIC",
        "-shared",
        "-fvisibility=hidden",
        "-fvisibility-inlines-hidden",
        "-Wall",
        "-Wextra",
        "-Werror",
        f"-I{entry.hixl / 'src' / 'hixl' / 'proxy'}",
        f"-I{entry.hixl / 'src' / 'llm_datadist'}",
        f"-I{entry.ascend / 'include'}",
        f"-I{entry.ascend / 'include' / 'hccl'}",
        f"-I{json_include}",
    ]


def ensure(entry: Entry, say: Callable[[str], None]) -> Path:
    """The compiled transport for ``entry``, compiling it first when its source or flags changed."""
    compiler = shutil.which("c++")
    if compiler is None:
        raise UpstreamError("c++ is not on PATH; install it (apt-get install g++)")
    try:
        flags = _flags(entry)
    except ImportError:
        raise UpstreamError(
            "the Python package 'nlohmann_json' is missing; pip install nlohmann-json"
        ) from None
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *flags]).encode()).hexdigest()[:12]
    folder = entry.folder / "transport" / digest
    library = folder / LIBRARY
    if library.is_file():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{LIBRARY}.{os.getpid()}"
    log = folder / "compile.log"
    say(f"compiling our HCCL transport ({SOURCE.name}, about 20 s)")
    with log.open("w") as out:
        done = subprocess.run(
            [compiler, *flags, str(SOURCE), "-o", str(partial), "-ldl"],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise UpstreamError(f"compiling {SOURCE} failed (exit {done.returncode}); read {log}")
    os.replace(partial, library)
    return library


def environment(entry: Entry, library: Path, registry: Path) -> dict[str, str]:
    """What a process needs to run the real llm_datadist over our transport."""
    preload = " ".join(p for p in (str(library), os.environ.get("LD_PRELOAD", "")) if p)
    return {"LD_PRELOAD": preload, ENV_DIR: str(registry), "PYTHONPATH": str(entry.python)}
