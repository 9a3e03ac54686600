"""``kvtest upstream build``: the archives -> a trusted cache folder, or a one-line reason why not.

Steps (hixl ``tests/run_test.sh`` does the same for its own CI with a real CANN): extract, fake CANN
and third-party folders (``stage.py``), ``cmake -DENABLE_TEST=ON`` (hixl ``CMakeLists.txt``: the test
build compiles the real C++ against ``tests/depends/``), ``make llm_datadist_wrapper_stub
metadef_wrapper_stub`` (hixl ``tests/depends/python/CMakeLists.txt``), then the package from
``src/python/llm_datadist/llm_datadist/`` with the two wrappers beside its modules. All of it happens
in ``<root>/.tmp-<key>-<pid>``; ``READY`` is written last and the folder is renamed into place.
"""

from __future__ import annotations

import fcntl
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kvtest.upstream import stage
from kvtest.upstream.archives import Sources
from kvtest.upstream.cache import Entry
from kvtest.upstream.errors import UpstreamError

__all__ = ["RECIPE", "TARGETS", "build", "check_tools"]

RECIPE = "1"  # bump when the steps below change what lands in the cache
TARGETS = ("llm_datadist_wrapper_stub", "metadef_wrapper_stub")
_WRAPPERS = ("llm_datadist_wrapper.so", "metadef_wrapper.so")
_MIN_CMAKE = (3, 16)  # hixl CMakeLists.txt: cmake_minimum_required(VERSION 3.16)

Say = Callable[[str], None]


def check_tools() -> dict[str, str]:
    """The build tools, or an error naming the missing one and the package that brings it."""
    found: dict[str, str] = {}
    for tool, fix in (
        ("cmake", "apt-get install cmake"),
        ("make", "apt-get install make"),
        ("c++", "apt-get install g++"),
        ("cc", "apt-get install gcc"),
        ("ar", "apt-get install binutils"),
    ):
        path = shutil.which(tool)
        if path is None:
            raise UpstreamError(f"{tool} is not on PATH; install it ({fix})")
        found[tool] = path
    out = subprocess.run([found["cmake"], "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"(\d+)\.(\d+)", out)
    if match is None or (int(match[1]), int(match[2])) < _MIN_CMAKE:
        raise UpstreamError(
            f"cmake {match[0] if match else '?'} is too old; hixl needs >= 3.16 (pip install cmake)"
        )
    if platform.system() != "Linux":
        raise UpstreamError(f"the stub build runs on Linux only, not {platform.system()}")
    return found


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep(root: Path, say: Say) -> None:
    """Remove temp folders of builds whose process is gone (an interrupted build)."""
    for tmp in root.glob(".tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            say(f"removing {tmp} (left by an interrupted build)")
            shutil.rmtree(tmp, ignore_errors=True)


def _step(cmd: list[str], log: Path, what: str, cwd: Path, env: dict[str, str]) -> None:
    with log.open("w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        try:
            done = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
        except KeyboardInterrupt:
            raise UpstreamError(
                f"{what} interrupted; nothing was cached, rerun `kvtest upstream build`"
            ) from None
    if done.returncode != 0:
        raise UpstreamError(f"{what} failed (exit {done.returncode}); read {log}")


def _compile(work: Path, logs: Path, jobs: int, tools: dict[str, str], say: Say) -> Path:
    src, ascend, third, out = work / "src", work / "ascend", work / "third_party", work / "build"
    stage.fake_cann(src, ascend, jobs)
    stage.third_party(src, third)
    out.mkdir()
    env = {**os.environ, "ASCEND_HOME_PATH": str(ascend)}
    configure = [
        tools["cmake"],
        str(src / "hixl"),
        "-DENABLE_TEST=ON",
        "-DCMAKE_BUILD_TYPE=DT",  # hixl cmake/variables.cmake: the unit-test flags (-O0 -g, no -Werror)
        f"-DCANN_3RD_LIB_PATH={third}",
        f"-DPython3_EXECUTABLE={sys.executable}",
        f"-DPython3_INCLUDE_DIR={stage.python_include()}",
        f"-DCMAKE_C_COMPILER={tools['cc']}",
        f"-DCMAKE_CXX_COMPILER={tools['c++']}",
        # the libraries move into the cache: look beside themselves and in <key>/lib
        "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
        "-DCMAKE_INSTALL_RPATH=$ORIGIN;$ORIGIN/../../lib",
    ]
    say("configuring (cmake, about 20 s)")
    _step(configure, logs / "configure.log", "cmake configure", out, env)
    say(f"compiling {' '.join(TARGETS)} with -j{jobs} (about 8 minutes on 2 cores); log {logs / 'make.log'}")
    _step([tools["make"], f"-j{jobs}", *TARGETS], logs / "make.log", "make", out, env)
    return out


def _assemble(work: Path, out: Path, ascend_lib: Path) -> list[str]:
    """python/, lib/, hixl/ and ascend/ of the key folder; returns the files READY vouches for."""
    package = work / "python" / "llm_datadist"
    shutil.copytree(work / "src" / "hixl" / "src" / "python" / "llm_datadist" / "llm_datadist", package)
    files: list[str] = []
    for name in _WRAPPERS:
        built = next(out.rglob(name), None)
        if built is None:
            raise UpstreamError(f"make finished without {name}; read {work / 'logs' / 'make.log'}")
        shutil.copy2(built, package / name)
        files.append(f"python/llm_datadist/{name}")
    lib = work / "lib"
    lib.mkdir()
    for so in sorted(out.rglob("*.so")):
        if so.name not in _WRAPPERS and not (lib / so.name).exists():
            shutil.copy2(so, lib / so.name)
            files.append(f"lib/{so.name}")
    shutil.copy2(ascend_lib / "libc_sec.so", lib / "libc_sec.so")
    files.append("lib/libc_sec.so")
    shutil.move(str(work / "src" / "hixl"), work / "hixl")
    shutil.move(str(work / "ascend"), work / "ascend")
    files.append("hixl/tests/python")
    return files


def _unresolved(work: Path) -> str | None:
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    for name in _WRAPPERS:
        text = subprocess.run(
            [ldd, str(work / "python" / "llm_datadist" / name)], capture_output=True, text=True, check=False
        ).stdout
        for line in text.splitlines():
            if "not found" in line:
                return f"{name}: {line.strip()}"
    return None


def build(sources: Sources, root: Path, jobs: int, say: Say) -> Entry:
    """Build ``sources`` into ``root/<key>`` unless a trusted build is there already."""
    entry = Entry(root / sources.key)
    if entry.problem() is None:
        return entry
    tools = check_tools()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{sources.key}.lock"):
        if entry.problem() is None:  # another build finished while we waited
            return entry
        _sweep(root, say)
        if entry.folder.exists():
            say(f"discarding {entry.folder}: {entry.problem()}")
            shutil.rmtree(entry.folder)
        work = root / f".tmp-{sources.key}-{os.getpid()}"
        logs = work / "logs"
        logs.mkdir(parents=True)
        started = time.monotonic()
        try:
            say(f"extracting {len(sources.paths)} archives from {sources.folder}")
            stage.extract(sources, work / "src")
            out = _compile(work, logs, jobs, tools, say)
            files = _assemble(work, out, work / "ascend" / "lib64")
            unresolved = _unresolved(work)
            if unresolved is not None:
                raise UpstreamError(f"the built wrapper cannot load: {unresolved}; read {logs / 'make.log'}")
            shutil.rmtree(out)
            shutil.rmtree(work / "src")
            shutil.rmtree(work / "third_party")
            seconds = round(time.monotonic() - started, 1)
            Entry(work).write_ready(
                files,
                {
                    "key": sources.key,
                    "recipe": RECIPE,
                    "build_seconds": seconds,
                    "python": sys.executable,
                    "sources": str(sources.folder),
                },
            )
            os.rename(work, entry.folder)
        except BaseException as exc:
            kept = _keep_logs(root, sources.key, logs)
            shutil.rmtree(work, ignore_errors=True)
            if isinstance(exc, UpstreamError):
                raise UpstreamError(str(exc).replace(str(logs), str(kept))) from None
            if isinstance(exc, KeyboardInterrupt):
                raise UpstreamError(
                    "build interrupted; nothing was cached, rerun `kvtest upstream build`"
                ) from None
            raise
    return entry


def _keep_logs(root: Path, key: str, logs: Path) -> Path:
    """Move a failed build's logs to ``<root>/failed-<key>/`` so the error can name them."""
    kept = root / f"failed-{key}"
    shutil.rmtree(kept, ignore_errors=True)
    if logs.is_dir():
        shutil.move(str(logs), kept)
    return kept
