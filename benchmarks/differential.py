"""The differential suite: the same call sequences (benchmarks/differential_calls.py) against the sim,
through kvtest's shims, and against the REAL llm_datadist built by ``kvtest upstream build``; every
call's outcome (return value, or exception type + status code + message) compared.

    python benchmarks/differential.py            # prints "N of M identical" and every differing call
    python benchmarks/differential.py --sim-only # the sim's outcomes alone (no real build needed)

The real build is looked up as ``${KVTEST_UPSTREAM_CACHE:-~/.cache/kvtest/upstream}/<key>/`` holding a
``READY`` marker; its ``python/`` folder goes on PYTHONPATH (``--real DIR`` names one). Each backend runs
in its own process (one process cannot hold two LLMDataDists). Exit status: 0 when at least
``--goal`` percent (default 95) are identical, 1 otherwise, 2 when a side could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CALLS = Path(__file__).resolve().parent / "differential_calls.py"
CACHE_VAR = "KVTEST_UPSTREAM_CACHE"


def find_real(explicit: Path | None) -> Path | None:
    """The ``python/`` folder of a finished real build, or None."""
    if explicit is not None:
        return explicit
    cache = Path(os.environ.get(CACHE_VAR) or Path.home() / ".cache" / "kvtest" / "upstream")
    ready = sorted(cache.glob("*/READY"), key=lambda p: p.stat().st_mtime, reverse=True)
    return ready[0].parent / "python" if ready else None


def sim_env(folder: Path) -> dict[str, str]:
    sys.path.insert(0, str(ROOT))
    from kvtest.dropin.environment import child_env

    store = folder / "store"
    return child_env(os.environ, folder, f"file://{store}", "differential", "p0")


def real_env(python_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(python_dir)
    libs = [
        str(p) for p in (python_dir, python_dir.parent / "lib", python_dir.parent / "lib64") if p.is_dir()
    ]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    return env


def _finish(proc: subprocess.Popen[str], timeout_s: float) -> tuple[str, str]:
    """The process's stdout and how it ended (killed at the deadline)."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, _ = proc.communicate()
        return stdout, f"timed out after {timeout_s:.0f} s"
    ended = f"exit {proc.returncode}"
    if proc.returncode != 0:
        ended += ": " + (stderr.strip().splitlines() or ["(no stderr)"])[-1]
    return stdout, ended


def run_side(name: str, env: dict[str, str], port: int, timeout_s: float) -> tuple[dict[str, Any], str]:
    """``{label: outcome}`` in call order (a repeated label gets ``#2``, ...), and how the runs ended:
    the one-process sequence, then the two-process one (a server and a client process)."""

    def start(*args: str) -> subprocess.Popen[str]:
        cmd = [sys.executable, str(CALLS), "--port", *args]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    stdout, ended = _finish(start(str(port)), timeout_s)
    with tempfile.TemporaryDirectory(prefix="kvtest-differential-2p-") as tmp:
        flag = str(Path(tmp) / "flag")
        peer = start(str(port + 2), "--phase", "server", "--flag", flag)
        mine = start(str(port + 2), "--phase", "client", "--flag", flag)
        client_out, client_end = _finish(mine, timeout_s)
        server_out, server_end = _finish(peer, timeout_s)
    stdout += server_out + client_out
    ended = f"one process: {ended}; two: server {server_end}, client {client_end}"
    outcomes: dict[str, Any] = {}
    seen: Counter[str] = Counter()
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "call" not in record:
            continue
        seen[record["call"]] += 1
        label = record["call"] if seen[record["call"]] == 1 else f"{record['call']}#{seen[record['call']]}"
        outcomes[label] = record["outcome"]
    return outcomes, f"{name}: {len(outcomes)} calls, {ended}"


def describe(outcome: Any) -> str:
    if outcome is None:
        return "(not reached)"
    if "raises" in outcome:
        code = f" [{outcome['status_code']}]" if outcome.get("status_code") else ""
        return f"raises {outcome['raises']}{code}: {outcome['message']}"
    return f"returns {json.dumps(outcome['returns'])}"


def compare(sim: dict[str, Any], real: dict[str, Any]) -> tuple[int, list[str]]:
    labels = list(dict.fromkeys([*real, *sim]))
    differing = [label for label in labels if sim.get(label) != real.get(label)]
    return len(labels) - len(differing), differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--real", type=Path, help="the real build's python/ folder (default: the newest READY build)"
    )
    parser.add_argument(
        "--sim-only", action="store_true", help="run the sim side alone and print its outcomes"
    )
    parser.add_argument("--port", type=int, default=26701, help="listen port base the calls use (and port+1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds each side may take")
    parser.add_argument("--goal", type=float, default=95.0, help="percent identical needed to pass")
    parser.add_argument("--json", type=Path, help="write both sides' outcomes here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kvtest-differential-") as tmp:
        sim, sim_end = run_side("sim", sim_env(Path(tmp)), args.port, args.timeout)
    print(sim_end)
    if args.sim_only:
        for label, outcome in sim.items():
            print(f"{label}: {describe(outcome)}")
        return 0 if sim else 2
    python_dir = find_real(args.real)
    if python_dir is None or not python_dir.is_dir():
        where = args.real or f"${CACHE_VAR} or ~/.cache/kvtest/upstream"
        print(
            f"no real llm_datadist build found ({where}): build it with `kvtest upstream build`",
            file=sys.stderr,
        )
        return 2
    real, real_end = run_side(f"real ({python_dir})", real_env(python_dir), args.port, args.timeout)
    print(real_end)
    if not real or not sim:
        print("a side produced no outcomes; see above", file=sys.stderr)
        return 2
    identical, differing = compare(sim, real)
    total = identical + len(differing)
    print(f"{identical} of {total} identical ({100 * identical / total:.1f}%)")
    for label in differing:
        print(f"DIFFERS {label}\n    real: {describe(real.get(label))}\n    sim:  {describe(sim.get(label))}")
    if args.json:
        args.json.write_text(json.dumps({"sim": sim, "real": real, "differing": differing}, indent=1))
    return 0 if 100 * identical >= args.goal * total else 1


if __name__ == "__main__":
    sys.exit(main())
