"""Everything hixl's CMake expects from a CANN install and its third-party folder, made from the archives.

What configure needs is in ``/work/shared/upstream/README.md``: a folder laid out like CANN
(``include/``, ``pkg_inc/``, ``lib64/libc_sec``, ``share/info/*/version.info``; hixl
``cmake/find_cann_packages.cmake`` lists the include folders of the test build) and a
``CANN_3RD_LIB_PATH`` holding ``cann-cmake/``, ``json/include`` and ``pybind11/include``
(cann-cmake ``third_party/json.cmake`` and ``pybind11.cmake`` look there before they would download).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kvtest.upstream.archives import Sources
from kvtest.upstream.errors import UpstreamError

__all__ = ["PYBIND11_VERSION", "extract", "fake_cann", "python_include", "third_party"]

PYBIND11_VERSION = "2.13.6"  # the version cann-cmake third_party/pybind11.cmake pins
_CANN_VERSION = "Version=9.2.0\n"  # hixl's version check wants >= 9.1.0


def extract(sources: Sources, into: Path) -> None:
    """Unpack every archive under ``into`` (one top folder each)."""
    into.mkdir(parents=True, exist_ok=True)
    for archive in sources.paths.values():
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(into, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tar.extractall(into)


def _merge(src: Path, dst: Path) -> None:
    # symlinks=False copies what a link points at: runtime's pkg_inc links into include/
    shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=False)


def _compile_c_sec(src: Path, lib64: Path, work: Path, jobs: int) -> None:
    """libboundscheck is securec under another name; hixl links ``c_sec`` (.so and .a)."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise UpstreamError("no C compiler (cc/gcc) on PATH; install one (apt-get install build-essential)")
    work.mkdir(parents=True, exist_ok=True)
    sources = sorted((src / "src").glob("*.c"))

    def one(c_file: Path) -> Path:
        obj = work / (c_file.stem + ".o")
        _run(
            [cc, "-c", "-O2", "-fPIC", f"-I{src / 'include'}", str(c_file), "-o", str(obj)],
            work / "c_sec.log",
        )
        return obj

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        objects = [str(o) for o in pool.map(one, sources)]
    _run(
        [cc, "-shared", "-Wl,-soname,libc_sec.so", "-o", str(lib64 / "libc_sec.so"), *objects],
        work / "c_sec.log",
    )
    ar = shutil.which("ar")
    if ar is None:
        raise UpstreamError("ar is not on PATH; install binutils (apt-get install binutils)")
    _run([ar, "rcs", str(lib64 / "libc_sec.a"), *objects], work / "c_sec.log")


def _run(cmd: list[str], log: Path) -> None:
    with log.open("a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise UpstreamError(f"{Path(cmd[0]).name} failed (exit {done.returncode}); read {log}")


def fake_cann(src: Path, ascend: Path, jobs: int) -> None:
    """Lay out ``ascend`` like a CANN install from the extracted headers (``src``)."""
    runtime, metadef = src / "runtime", src / "metadef"
    include = ascend / "include"
    for part in (runtime / "include" / "external", runtime / "include" / "dfx", metadef / "inc" / "external"):
        _merge(part, include)
        _merge(part, include / "external")
    _merge(runtime / "pkg_inc", ascend / "pkg_inc")
    _merge(ascend / "pkg_inc" / "aicpu_sched", ascend / "pkg_inc" / "aicpu")
    hccl = include / "hccl"
    hccl.mkdir(parents=True, exist_ok=True)
    for name in ("hccl_types.h", "base.h"):
        shutil.copy(runtime / "src" / "queue_schedule" / "common" / "hccl" / name, hccl / name)
    for header in (src / "libboundscheck" / "include").glob("*.h"):
        shutil.copy(header, include / header.name)
    lib64 = ascend / "lib64"
    lib64.mkdir(parents=True, exist_ok=True)
    _compile_c_sec(src / "libboundscheck", lib64, ascend / "c_sec_obj", jobs)
    devlib = ascend / "devlib"
    devlib.mkdir(parents=True, exist_ok=True)
    (devlib / "libascend_hal.so").touch()  # only looked up by find_package
    for component in ("runtime", "metadef", "hcomm"):
        info = ascend / "share" / "info" / component
        info.mkdir(parents=True, exist_ok=True)
        (info / "version.info").write_text(_CANN_VERSION)


def _package_folder(module: str, fix: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise UpstreamError(f"the Python package {module!r} is missing from {sys.executable}; {fix}")
    return Path(spec.origin).parent


def third_party(src: Path, third: Path) -> None:
    """``CANN_3RD_LIB_PATH``: cann-cmake, nlohmann json headers and pybind11 headers, nothing downloaded."""
    third.mkdir(parents=True, exist_ok=True)
    (third / "cann-cmake").symlink_to(src / "cann-cmake")
    fix_pybind = f"pip install pybind11=={PYBIND11_VERSION}"
    pybind = _package_folder("pybind11", fix_pybind)
    version = (pybind / "_version.py").read_text() if (pybind / "_version.py").is_file() else ""
    if f'"{PYBIND11_VERSION}"' not in version:
        raise UpstreamError(
            f"pybind11 in {pybind} is not {PYBIND11_VERSION} (the version cann pins); {fix_pybind}"
        )
    (third / "pybind11").mkdir()
    (third / "pybind11" / "include").symlink_to(pybind / "include")
    json = _package_folder("nlohmann_json", "pip install nlohmann-json")
    if not (json / "include" / "nlohmann" / "json.hpp").is_file():
        raise UpstreamError(
            f"{json} holds no include/nlohmann/json.hpp; pip install --force-reinstall nlohmann-json"
        )
    (third / "json").mkdir()
    (third / "json" / "include").symlink_to(json / "include")


def python_include() -> Path:
    """The folder holding Python.h for this interpreter (the wrappers are pybind11 modules)."""
    folder = Path(sysconfig.get_paths()["include"])
    if not (folder / "Python.h").is_file():
        raise UpstreamError(
            f"Python.h is missing from {folder}; install the headers of Python "
            f"{sys.version_info.major}.{sys.version_info.minor} (apt-get install python3-dev)"
        )
    return folder
