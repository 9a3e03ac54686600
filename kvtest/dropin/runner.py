"""``kvtest run``: start a P/D group of commands (vendor samples, your own programs) and judge it.

On sim, kvtest hosts the group's store (a TCPStore on loopback) and starts every command with the
shims first on its import path (:mod:`kvtest.dropin.environment`), so an unmodified
``import llm_datadist`` program runs on CPU. On npu the commands run as they are.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from kvtest.dropin.environment import child_env
from kvtest.dropin.group import DEFAULT_FAIL_ON, Group, Member, Outcome

HELP = "run llm_datadist programs (e.g. the vendor's P and D sample commands) as one group, on sim or npu"
DESCRIPTION = (
    "Start every command at once as one group (p0.., d0..), stop the rest at the first failure (non-zero "
    "exit, or a line matching --fail-on), and exit 0 only when all passed. On sim, kvtest hosts the sim's "
    "store and each command finds kvtest's llm_datadist, torch_npu and torchair stand-ins first on its "
    "import path and a fake hccn_tool on PATH, so an unmodified llm_datadist program runs on CPU. On "
    "upstream, the same but llm_datadist is the real one built by `kvtest upstream build`, its HCCL layer "
    "kvtest's transport between the processes. On npu the commands run as they are."
)
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_LOGS = Path("kvtest-logs")
_ROLE_NAME = re.compile(r"^[pd](0|[1-9][0-9]?)$")
_ROLE_FLAG = re.compile(r"(?:^|\s)--role[=\s]+['\"]?([pd])['\"]?(?:\s|$)")


class RunError(Exception):
    """A bad ``kvtest run`` invocation; the message names the value and the fix."""


def assign_roles(commands: Sequence[str], roles: Sequence[str] | None = None) -> list[str]:
    """Role names for ``commands``: ``roles`` when given, else from each command's ``--role p|d``,
    else the first half p (p0, p1, ...) and the rest d (d0, ...)."""
    if roles:
        if len(roles) != len(commands):
            raise RunError(
                f"--roles names {len(roles)} role(s) ({','.join(roles)}) for {len(commands)} command(s): "
                "give one role per command, in order"
            )
        for role in roles:
            if not _ROLE_NAME.match(role):
                raise RunError(f"--roles entry {role!r} is not a role name like p0 or d1")
        if len(set(roles)) != len(roles):
            raise RunError(f"--roles {','.join(roles)} names a role twice; each command needs its own")
        return list(roles)
    found = [_ROLE_FLAG.search(command) for command in commands]
    if all(found):
        sides = [match.group(1) for match in found if match]
    else:
        prefill = math.ceil(len(commands) / 2)
        sides = ["p"] * prefill + ["d"] * (len(commands) - prefill)
    counts = {"p": 0, "d": 0}
    out = []
    for side in sides:
        out.append(f"{side}{counts[side]}")
        counts[side] += 1
    return out


def resolve_backend(requested: str) -> tuple[str, str]:
    """The backend to run on and why (``auto``: npu when llm_datadist, torch_npu and a device are there)."""
    if requested in ("sim", "npu", "upstream"):
        return requested, f"{requested} requested"
    from kvtest.backends import npu

    usable, why = npu.probe()
    return ("npu", f"auto chose npu: {why}") if usable else ("sim", f"auto chose sim: npu unusable ({why})")


def _upstream_env(folder: Path, base: Mapping[str, str]) -> dict[str, str]:
    """The real llm_datadist from the cache and our transport, or a :class:`RunError` naming the fix.

    The transport's registry (each process's pid under its rank-table entry) is ``folder/hccl``, or
    ``KVTEST_HCCL_DIR`` when set: two ``kvtest run`` of one paired run (one per network namespace of a
    host) must share it, as both roles' stub devices share the host's memory.
    """
    from kvtest.upstream import transport
    from kvtest.upstream.cli import cached_entry
    from kvtest.upstream.errors import UpstreamError

    try:
        entry = cached_entry()
        library = transport.ensure(entry, lambda text: print(f"kvtest run: {text}", flush=True))
    except UpstreamError as exc:
        raise RunError(str(exc)) from None
    registry = Path(base[transport.ENV_DIR]) if base.get(transport.ENV_DIR) else folder / "hccl"
    registry.mkdir(parents=True, exist_ok=True)
    return transport.environment(entry, library, registry)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _host_store() -> tuple[object, str]:
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    return store, f"tcp://127.0.0.1:{store.port}"


def run_group(
    commands: Sequence[str],
    *,
    backend: str = "sim",
    roles: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    fail_on: str | None = DEFAULT_FAIL_ON,
    logs: Path = DEFAULT_LOGS,
    echo: Callable[[str], None] | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Outcome:
    """Run ``commands`` as one group on ``backend`` (``sim`` or ``npu``); logs go to ``logs/<role>.log``."""
    if not commands:
        raise RunError("no command given: kvtest run 'python prefill.py ...' 'python decode.py ...'")
    names = assign_roles(commands, roles)
    base = dict(os.environ if env is None else env)
    store = None
    with tempfile.TemporaryDirectory(prefix="kvtest-shims-") as shim_dir:
        if backend in ("sim", "upstream"):
            store, url = _host_store()
            namespace = f"kvtest-run-{uuid.uuid4().hex[:12]}"
            base.setdefault("MASTER_ADDR", "127.0.0.1")
            base.setdefault("MASTER_PORT", str(free_port()))  # for programs that leave it to the environment
            first = _upstream_env(Path(shim_dir), base) if backend == "upstream" else None
            envs = [child_env(base, Path(shim_dir), url, namespace, role, first) for role in names]
        else:
            envs = [base for _ in names]
        members = [
            Member(role, command, member_env, logs / f"{role}.log")
            for role, command, member_env in zip(names, commands, envs)
        ]
        outcome = Group(members, timeout=timeout, fail_on=fail_on, echo=echo, cwd=cwd).run()
    del store
    return outcome


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("commands", nargs="+", metavar="CMD", help="one shell command line per role, quoted")
    parser.add_argument(
        "--backend",
        choices=("auto", "npu", "sim", "upstream"),
        default="auto",
        help="default: auto (npu or sim); upstream: the real llm_datadist built by `kvtest upstream build`",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="seconds the whole group may take; commands still running then have hung "
        f"(default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--fail-on",
        default=DEFAULT_FAIL_ON,
        metavar="REGEX",
        help=f"a line matching it fails its command (default {DEFAULT_FAIL_ON!r}, the vendor's "
        "run_example.sh convention; '' turns it off)",
    )
    parser.add_argument(
        "--logs",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder for one log per command (default kvtest-logs/run-<time>)",
    )
    parser.add_argument(
        "--roles",
        default=None,
        metavar="p0,d0,...",
        help="role names in command order (default: each command's --role p|d, else first half p, rest d)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="do not echo the commands' output")


def run(args: argparse.Namespace) -> int:
    """The ``kvtest run`` subcommand: 0 when every command passed, 1 when the group failed, 2 on bad input."""
    if args.timeout <= 0:
        print(f"kvtest run: --timeout {args.timeout:g} must be more than 0 seconds", file=sys.stderr)
        return 2
    if args.fail_on:
        try:
            re.compile(args.fail_on)
        except re.error as exc:
            print(
                f"kvtest run: --fail-on {args.fail_on!r} is not a regular expression ({exc})", file=sys.stderr
            )
            return 2
    roles = [r.strip() for r in args.roles.split(",")] if args.roles else None
    logs = args.logs or DEFAULT_LOGS / time.strftime("run-%Y%m%d-%H%M%S")
    try:
        names = assign_roles(args.commands, roles)
        backend, why = resolve_backend(args.backend)
    except RunError as exc:
        print(f"kvtest run: {exc}", file=sys.stderr)
        return 2
    print(f"kvtest run: backend {backend} ({why}); logs in {logs}", flush=True)
    if backend == "sim":
        print(
            "kvtest run: sim: llm_datadist, torch_npu, torchair and hccn_tool are kvtest's shims", flush=True
        )
    if backend == "upstream":
        print(
            "kvtest run: upstream: the real llm_datadist (kvtest upstream build) over kvtest's HCCL "
            "transport; torch_npu, torchair and hccn_tool are kvtest's shims",
            flush=True,
        )
    for role, command in zip(names, args.commands):
        print(f"kvtest run: {role}: {command}", flush=True)

    def echo(line: str) -> None:
        print(line, flush=True)

    def stop_on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through Group.run, which stops every command

    signal.signal(signal.SIGTERM, stop_on_sigterm)

    try:
        outcome = run_group(
            args.commands,
            backend=backend,
            roles=names,
            timeout=args.timeout,
            fail_on=args.fail_on or None,
            logs=logs,
            echo=None if args.quiet else echo,
        )
    except RunError as exc:
        print(f"kvtest run: {exc}", file=sys.stderr)
        return 2
    for member in outcome.members:
        print(f"kvtest run: {member.role}: {member.describe_exit()} (log {member.log})", flush=True)
    verdict = "passed" if outcome.ok else "FAILED"
    print(f"kvtest run: {verdict} in {outcome.seconds:.1f}s: {outcome.summary}", flush=True)
    return 0 if outcome.ok else 1


__all__ = ["HELP", "RunError", "add_arguments", "assign_roles", "run", "run_group"]
