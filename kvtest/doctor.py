"""``kvtest doctor``: a preflight table for one host, and for its peer when given one.

Each line is a :class:`~kvtest.host.envcheck.Check` (ok / warn / fail / skip) with a fix for every
failure; the exit code is 1 when any line failed. With ``--listen PORT`` on one host and
``--peer HOST:PORT`` on the other, the two doctors swap their facts as JSON through a
``torch.distributed.TCPStore`` (the listener hosts it) and check what only the pair can: device
network reachability (``hccn_tool -ping``), TLS agreement, matching versions. Every wait has a
deadline (``--timeout``).
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from kvtest.backends import BACKEND_CHOICES
from kvtest.host import devices
from kvtest.host.envcheck import FAIL, OK, SKIP, WARN, Check, env_checks

__all__ = ["HELP", "Facts", "add_arguments", "collect", "exchange", "peer_checks", "render", "run"]

HELP = (
    "preflight for a p/d pair: backends, NPUs, device IPs, TLS, env vars, and (with --listen/--peer) "
    "the peer's reachability over the device network"
)

_KEY_LISTEN = "kvtest/doctor/listen"
_KEY_PEER = "kvtest/doctor/peer"
_KEY_PEER_READ = "kvtest/doctor/peer-read"
_SIM_FIX = "pip install 'kvtest[sim]' (brings nixl-cu12)"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected an integer 1..65535") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"invalid port {port}: expected 1..65535")
    return port


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"invalid peer {text!r}: expected HOST:PORT, e.g. 10.10.10.1:29600")
    return host.strip("[]"), _port(port)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: expected seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid timeout {value:g}: must be > 0 seconds")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kvtest doctor``."""
    side = parser.add_mutually_exclusive_group()
    side.add_argument(
        "--peer", metavar="HOST:PORT", type=_host_port, help="connect to the doctor listening on HOST:PORT"
    )
    side.add_argument(
        "--listen", metavar="PORT", type=_port, help="host the fact exchange on PORT; run this side first"
    )
    parser.add_argument(
        "--device-id", metavar="N", type=int, default=None, help="the (logical) NPU this side will use"
    )
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="the backend that must work: auto (either), npu or sim (default: auto)",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_timeout,
        default=60.0,
        help="deadline of every wait (default 60)",
    )
    parser.add_argument("--json", action="store_true", help="print the checks and facts as JSON")


@dataclass
class Facts:
    """What one side knows about itself; the part the peer needs is :meth:`shared`."""

    host: str
    kvtest: str
    cann: str
    npu_usable: bool
    #: physical device id -> device IP, for the devices this side will use
    device_ips: dict[int, str] = field(default_factory=dict)
    #: physical device id -> TLS switch
    tls: dict[int, bool] = field(default_factory=dict)

    def shared(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "kvtest": self.kvtest,
            "cann": self.cann,
            "npu_usable": self.npu_usable,
            "device_ips": {str(k): v for k, v in self.device_ips.items()},
            "tls": {str(k): v for k, v in self.tls.items()},
        }

    @classmethod
    def from_shared(cls, data: dict[str, Any]) -> Facts:
        return cls(
            host=str(data.get("host", "?")),
            kvtest=str(data.get("kvtest", "?")),
            cann=str(data.get("cann", "?")),
            npu_usable=bool(data.get("npu_usable", False)),
            device_ips={int(k): str(v) for k, v in dict(data.get("device_ips", {})).items()},
            tls={int(k): bool(v) for k, v in dict(data.get("tls", {})).items()},
        )


def _probe_sim() -> tuple[bool, str]:
    import importlib

    try:
        importlib.import_module("torch")
    except Exception as exc:
        return False, f"torch does not import: {' '.join(str(exc).split())}"
    try:
        importlib.import_module("nixl_cu12")
    except Exception as exc:
        return False, f"nixl_cu12 does not import: {' '.join(str(exc).split()) or type(exc).__name__}"
    from kvtest.host.fingerprint import package_version

    version = package_version("nixl-cu12", "nixl_cu12", "nixl")
    return True, f"nixl_cu12 {version} imports"


def _fix_of(reason: str) -> str:
    """The fix part of a BackendUnavailable message ("what is missing: how to fix it")."""
    for marker in ("; source ", ": pip install", ": CANN", ": check", "; check"):
        if marker in reason:
            return reason[reason.index(marker) + 2 :].strip()
    return "see the reason"


def _backend_checks(requested: str) -> tuple[list[Check], bool, bool]:
    from kvtest.backends import npu

    note = npu.protect_torch_import()
    npu_ok, npu_why = npu.probe()
    sim_ok, sim_why = _probe_sim()
    if note:
        sim_why = f"{sim_why}; {note}"
    none_usable = not (npu_ok or sim_ok)
    checks = []
    for name, usable, why, fix in (
        ("sim", sim_ok, sim_why, _SIM_FIX),
        ("npu", npu_ok, npu_why, _fix_of(npu_why)),
    ):
        required = requested == name or (requested == "auto" and none_usable)
        if usable:
            checks.append(Check(f"backend {name}", OK, why))
        else:
            checks.append(Check(f"backend {name}", FAIL if required else WARN, f"unusable: {why}", fix))
    npu_required = requested == "npu" or (requested == "auto" and npu_ok)
    return checks, npu_ok, npu_required


def _targets(device_id: int | None) -> tuple[list[int], Check]:
    """The physical devices this side will use, and the 'devices' line.

    ``device_id`` is logical (as ``--device-id`` everywhere); ``hccn_tool`` gets the physical ids.
    """
    nodes = devices.visible_devices()
    shown = ",".join(map(str, nodes)) or "none"
    if not nodes:
        missing = "no /dev/davinciN visible"
        if device_id is not None:
            missing = f"device {device_id}: {missing}"
        return [], Check(
            "devices", FAIL, missing, "check the driver (npu-smi info) and the container's --device"
        )
    try:
        mapping = devices.device_map()
        if device_id is not None:
            phys = devices.physical_id(device_id)
    except devices.DeviceError as exc:
        fix = "pick a visible device with --device-id, or fix ASCEND_RT_VISIBLE_DEVICES"
        return [], Check("devices", FAIL, str(exc), fix)
    if device_id is not None:
        return [phys], Check("devices", OK, f"using npu {device_id} (physical {phys}); visible: {shown}")
    targets = list(mapping.values())
    used = ",".join(f"{n} (physical {p})" if p != n else str(p) for n, p in mapping.items())
    return targets, Check("devices", OK, f"using npu {used}; visible: {shown}")


def _device_checks(targets: list[int], timeout: float, facts: Facts) -> list[Check]:
    try:
        tool = devices.find_hccn_tool()
    except devices.DeviceError as exc:
        return [Check("hccn_tool", FAIL, str(exc), "export PATH=$PATH:/usr/local/Ascend/driver/tools")]
    checks = [Check("hccn_tool", OK, tool)]
    for dev in targets:
        try:
            facts.device_ips[dev] = devices.device_ip(dev, timeout=min(timeout, 10.0))
            checks.append(Check(f"device ip npu{dev}", OK, facts.device_ips[dev]))
        except devices.DeviceError as exc:
            checks.append(Check(f"device ip npu{dev}", FAIL, str(exc), _after_colon(str(exc))))
    tls_errors: list[str] = []
    for dev in targets:
        try:
            facts.tls[dev] = devices.tls_enabled(dev, timeout=min(timeout, 10.0))
        except devices.DeviceError as exc:
            tls_errors.append(str(exc))
    if tls_errors:
        checks.append(Check("tls", FAIL, tls_errors[0], _after_colon(tls_errors[0])))
    elif facts.tls:
        checks.append(_tls_agreement("tls", {"this host": facts.tls}))
    return checks


def _after_colon(message: str) -> str:
    return message.rsplit(": ", 1)[-1] if ": " in message else message


def _tls_summary(tls: dict[int, bool]) -> str:
    on = [d for d, v in sorted(tls.items()) if v]
    off = [d for d, v in sorted(tls.items()) if not v]
    parts = []
    if on:
        parts.append("on (npu " + ",".join(map(str, on)) + ")")
    if off:
        parts.append("off (npu " + ",".join(map(str, off)) + ")")
    return " / ".join(parts) or "unknown"


def _tls_agreement(name: str, sides: dict[str, dict[int, bool]]) -> Check:
    values = {v for tls in sides.values() for v in tls.values()}
    detail = "; ".join(f"{side}: {_tls_summary(tls)}" for side, tls in sides.items())
    if len(values) <= 1:
        return Check(name, OK, detail)
    return Check(
        name,
        FAIL,
        f"TLS differs ({detail}): devices with different TLS settings cannot link",
        "make it the same everywhere, e.g. hccn_tool -i N -tls -s enable 0 on every device of both hosts",
    )


def collect(args: argparse.Namespace) -> tuple[list[Check], Facts, bool]:
    """This side's checks and facts; the flag says whether device checks count as failures."""
    from kvtest.host.fingerprint import cann_version, kvtest_version

    backend_lines, npu_ok, npu_required = _backend_checks(args.backend)
    facts = Facts(host=socket.gethostname(), kvtest=kvtest_version(), cann=cann_version(), npu_usable=npu_ok)
    checks = list(backend_lines)
    run_devices = npu_required or bool(devices.visible_devices())
    if not run_devices:
        checks.append(
            Check("devices", SKIP, "npu backend unusable and no /dev/davinciN: device checks skipped")
        )
        return checks, facts, npu_required
    targets, line = _targets(args.device_id)
    checks.append(line)
    if targets:
        checks.extend(_device_checks(targets, args.timeout, facts))
    if not npu_required:
        checks = [_soften(c) if c.name not in ("backend sim", "backend npu") else c for c in checks]
    return checks, facts, npu_required


def _soften(check: Check) -> Check:
    """A device failure on a host that will not use the npu backend is a warning."""
    return Check(check.name, WARN, check.detail, check.fix) if check.failed else check


class ExchangeError(Exception):
    """The fact exchange failed; ``check`` is the line that says where and how to fix it."""

    def __init__(self, check: Check) -> None:
        super().__init__(check.detail)
        self.check = check


def _wait_reachable(host: str, port: int, deadline: float) -> None:
    last: OSError | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with socket.create_connection((host, port), timeout=min(left, 3.0)):
                return
        except OSError as exc:
            last = exc
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    raise ExchangeError(
        Check(
            "rendezvous",
            FAIL,
            f"{host}:{port} unreachable: {last or 'timed out'}",
            f"start kvtest doctor --listen {port} on {host} first and open TCP port {port} between the hosts",
        )
    )


def exchange(args: argparse.Namespace, mine: Facts) -> tuple[Facts, Check]:
    """Swap facts with the other doctor through a TCPStore; every wait ends at ``args.timeout``.

    :raises ExchangeError: when the store cannot be hosted or reached, or the peer stays silent.
    """
    try:
        from torch._C._distributed_c10d import TCPStore
    except Exception as exc:
        raise ExchangeError(
            Check(
                "rendezvous", FAIL, f"torch.distributed is unusable: {exc}", "install torch with distributed"
            )
        ) from exc
    timeout = timedelta(seconds=args.timeout)
    deadline = time.monotonic() + args.timeout
    payload = json.dumps(mine.shared())
    if args.listen is not None:
        port = args.listen
        try:
            store = TCPStore(
                "0.0.0.0", port, world_size=2, is_master=True, timeout=timeout, wait_for_workers=False
            )
        except Exception as exc:
            raise ExchangeError(
                Check(
                    "rendezvous",
                    FAIL,
                    f"cannot listen on port {port}: {exc}",
                    "pick a free port for --listen",
                )
            ) from exc
        reach = Check("rendezvous", OK, f"listening on port {port}")
        store.set(_KEY_LISTEN, payload)
        theirs = _fetch(
            store, _KEY_PEER, deadline, f"run kvtest doctor --peer {mine.host}:{port} on the other host"
        )
        # keep hosting until the peer has read our facts, or it would see the store vanish
        _wait_key(store, _KEY_PEER_READ, deadline, "the peer stopped before reading this side's facts")
        return theirs, reach
    host, port = args.peer
    _wait_reachable(host, port, deadline)
    try:
        left = timedelta(seconds=max(1.0, deadline - time.monotonic()))
        store = TCPStore(host, port, world_size=2, is_master=False, timeout=left)
    except Exception as exc:
        raise ExchangeError(
            Check(
                "rendezvous",
                FAIL,
                f"{host}:{port} accepted but no TCPStore answered: {exc}",
                "is it kvtest doctor?",
            )
        ) from exc
    store.set(_KEY_PEER, payload)
    theirs = _fetch(store, _KEY_LISTEN, deadline, f"check kvtest doctor --listen {port} on {host}")
    store.set(_KEY_PEER_READ, "1")
    return theirs, Check("rendezvous", OK, f"{host}:{port} reachable")


def _wait_key(store: Any, key: str, deadline: float, fix: str) -> bytes:
    left = max(0.1, deadline - time.monotonic())
    try:
        store.wait([key], timedelta(seconds=left))
        raw: bytes = store.get(key)
    except Exception as exc:
        raise ExchangeError(
            Check("peer", FAIL, f"no answer for {key} within {left:.0f}s: {' '.join(str(exc).split())}", fix)
        ) from exc
    return raw


def _fetch(store: Any, key: str, deadline: float, fix: str) -> Facts:
    raw = _wait_key(store, key, deadline, fix)
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        return Facts.from_shared(data)
    except (ValueError, TypeError) as exc:
        raise ExchangeError(
            Check("peer", FAIL, f"unreadable facts under {key}: {exc}", "run the same kvtest on both hosts")
        ) from exc


def peer_checks(mine: Facts, theirs: Facts, npu_required: bool, timeout: float) -> list[Check]:
    """What the pair must agree on: versions, TLS, and device-network reachability."""
    checks = [Check("peer", OK, f"{theirs.host} (kvtest {theirs.kvtest}, CANN {theirs.cann})")]
    if theirs.kvtest != mine.kvtest:
        checks.append(
            Check(
                "kvtest version",
                FAIL,
                f"this host {mine.kvtest}, peer {theirs.kvtest}",
                "install the same kvtest on both hosts",
            )
        )
    if theirs.cann != mine.cann:
        checks.append(
            Check(
                "CANN version",
                WARN,
                f"this host {mine.cann}, peer {theirs.cann}",
                "use the same CANN on both hosts unless that difference is the test",
            )
        )
    if not (npu_required or theirs.npu_usable):
        checks.append(Check("device network", SKIP, "neither side uses the npu backend"))
        return checks
    if mine.tls and theirs.tls:
        checks.append(_tls_agreement("tls agreement", {"this host": mine.tls, "peer": theirs.tls}))
    else:
        checks.append(Check("tls agreement", WARN, "TLS unknown on one side", "see that side's tls line"))
    peer_ips = list(theirs.device_ips.values())
    if not mine.device_ips or not peer_ips:
        checks.append(Check("ping", WARN, "no device IPs on one side to ping", "see the device ip lines"))
        return checks
    # device i pings the peer's i-th device: the pairing a 1:1 link uses, without an n*m sweep
    for index, dev in enumerate(sorted(mine.device_ips)):
        address = peer_ips[index % len(peer_ips)]
        name = f"ping npu{dev} -> {address}"
        try:
            result = devices.ping(dev, address, timeout=min(timeout, 30.0))
        except devices.DeviceError as exc:
            checks.append(Check(name, FAIL, str(exc), _after_colon(str(exc))))
            continue
        if result.ok:
            checks.append(Check(name, OK, f"{result.received}/{result.sent} replies"))
        else:
            checks.append(
                Check(
                    name,
                    FAIL,
                    f"{result.received}/{result.sent} replies: the device network does not reach {address}",
                    "check cabling, netmask and gateway (hccn_tool -i N -ip -g / -gateway -g / -link -g)",
                )
            )
    return checks


_VERDICT_WIDTH = 7


def render(host: str, backend: str, checks: list[Check]) -> str:
    """The human table: one line per check, the fix under each failure or warning."""
    width = max([len("CHECK"), *(len(c.name) for c in checks)])
    lines = [
        f"kvtest doctor on {host} (backend {backend})",
        f"  {'CHECK':<{width}}  {'VERDICT':<{_VERDICT_WIDTH}}  DETAIL",
    ]
    for check in checks:
        lines.append(f"  {check.name:<{width}}  {check.status:<{_VERDICT_WIDTH}}  {check.detail}")
        if check.fix and check.status in (FAIL, WARN):
            lines.append(f"  {'':<{width}}  {'':<{_VERDICT_WIDTH}}  fix: {check.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL, SKIP)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines.append(f"{summary}: {'FAILED' if counts[FAIL] else 'ready'}")
    return "\n".join(lines)


def _env_lines(device_id: int | None, single_host: bool | None, npu_required: bool) -> list[Check]:
    lines = env_checks(device_id, single_host)
    if npu_required:
        return lines
    return [
        Check(c.name, SKIP, f"{c.detail} (only the npu backend uses HCCL)")
        if c.name == "HCCL_INTRA_ROCE_ENABLE"
        else c
        for c in lines
    ]


def run(args: argparse.Namespace) -> int:
    """Run every check, print the table (or JSON); 0 when nothing failed, else 1."""
    checks, mine, npu_required = collect(args)
    theirs: Facts | None = None
    if args.peer is None and args.listen is None:
        checks.extend(_env_lines(args.device_id, None, npu_required))
        checks.append(Check("peer", SKIP, "no --listen/--peer: pair checks skipped"))
    else:
        try:
            theirs, reach = exchange(args, mine)
        except ExchangeError as exc:
            checks.extend(_env_lines(args.device_id, None, npu_required))
            checks.append(exc.check)
        else:
            checks.extend(_env_lines(args.device_id, theirs.host == mine.host, npu_required))
            checks.append(reach)
            checks.extend(peer_checks(mine, theirs, npu_required, args.timeout))
    failed = sum(c.failed for c in checks)
    if args.json:
        print(
            json.dumps(
                {
                    "host": mine.host,
                    "backend": args.backend,
                    "checks": [c.as_dict() for c in checks],
                    "facts": mine.shared(),
                    "peer": theirs.shared() if theirs else None,
                    "failed": failed,
                },
                indent=2,
            )
        )
    else:
        print(render(mine.host, args.backend, checks))
    return 1 if failed else 0
