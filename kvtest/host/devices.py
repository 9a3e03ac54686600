"""Ascend device facts from the host: ``/dev/davinciN`` nodes and ``hccn_tool`` queries.

Every ``hccn_tool`` call runs with a timeout, and every failure becomes a :class:`DeviceError`
whose message is one line naming the command, what went wrong and how to fix it.

Device ids. kvtest's ids (``--device-id``, the device pool, ``torch.npu.set_device``,
``LLMConfig.device_id``) are *logical*: an index into the devices this process can see (CANN's
pages call it the "user device id"). The rank table's ``device_id`` and ``hccn_tool -i N`` take
*physical* ids, and so does the device pool's host-wide lock. :func:`physical_id` converts, in the
runtime's two steps (CANN's ``aclrtGetPhyDevIdByLogicDevId`` page, "user / logical / physical
device ID"):

1. ``ASCEND_RT_VISIBLE_DEVICES=4,5`` makes logical id 0 the runtime's device 4 and 1 its device 5
   (unset: logical id *i* is device *i*);
2. the runtime's device *n* is the *n*-th ``/dev/davinciN`` node in ascending order: on a host that
   has ``davinci0..N`` this is the identity, in a container that was given ``davinci4`` and
   ``davinci5`` it maps 0 to 4 and 1 to 5.

This is how real llm_datadist does it (hicann/hixl ``src/llm_datadist/llm_datadist_v2.cc``:
``aclrtSetDevice(device_id)`` with ``LLMConfig.device_id``; ``src/llm_datadist/common/
rank_table_generator_v1.cc``: ``aclrtGetPhyDevIdByLogicDevId`` before a rank table's ``device_id``
and ``hixl::GetDeviceIp``), and what the samples' single-host rank table assumes
(``examples/python/llm_datadist/pull_cache_sample.py``: processes ``--device_id 0`` and ``1``, rank
table ``device_id`` = the first two ``/dev/davinciN``, their IPs from ``hccn_tool -i N``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvtest.host.problems import EnvironmentProblem

__all__ = [
    "DEV_DIR",
    "DEFAULT_ASCEND_ROOT",
    "HCCN_CONF",
    "DeviceError",
    "PingResult",
    "device_map",
    "ascend_root",
    "device_ip",
    "find_hccn_tool",
    "parse_device_ip",
    "parse_ping",
    "parse_tls",
    "parse_visible_devices",
    "physical_id",
    "ping",
    "tls_enabled",
    "visible_devices",
]

#: where the driver creates one ``davinciN`` node per NPU
DEV_DIR = "/dev"
#: the device network plan hccn_tool reads; a container that lacks it cannot query device IPs
HCCN_CONF = Path("/etc/hccn.conf")
#: the driver and toolkit install root unless ``KVTEST_ASCEND_ROOT`` says otherwise
DEFAULT_ASCEND_ROOT = "/usr/local/Ascend"

_DAVINCI = re.compile(r"^davinci(\d+)$")
_BUSY = "hccn_tool is busy"
_BUSY_RETRIES = 3


class DeviceError(EnvironmentProblem):
    """A device fact could not be read; ``str(exc)`` is one line: what failed and how to fix it."""


@dataclass(frozen=True)
class PingResult:
    """The outcome of ``hccn_tool -i N -ping -g address IP``."""

    device_id: int
    address: str
    sent: int
    received: int

    @property
    def ok(self) -> bool:
        return self.received > 0


def ascend_root(env: Mapping[str, str] | None = None) -> Path:
    """The Ascend install root (driver, firmware, toolkit).

    ``KVTEST_ASCEND_ROOT`` when set, else ``/usr/local/Ascend``.
    """
    env = os.environ if env is None else env
    return Path(env.get("KVTEST_ASCEND_ROOT") or DEFAULT_ASCEND_ROOT)


def visible_devices(dev_dir: str | os.PathLike[str] | None = None) -> list[int]:
    """Physical NPU ids with a ``/dev/davinciN`` node, ascending (the samples' single-host discovery)."""
    root = Path(DEV_DIR if dev_dir is None else dev_dir)
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in map(_DAVINCI.match, names) if m)


def parse_visible_devices(value: str) -> list[int]:
    """Parse ``ASCEND_RT_VISIBLE_DEVICES`` (the runtime's device ids, comma-separated).

    :raises DeviceError: on anything but non-negative integers separated by commas.
    """
    ids: list[int] = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit():
            raise DeviceError(
                f"ASCEND_RT_VISIBLE_DEVICES={value!r} is malformed: "
                "expected comma-separated device ids like 0,1"
            )
        ids.append(int(part))
    return ids


def device_map(
    env: Mapping[str, str] | None = None, dev_dir: str | os.PathLike[str] | None = None
) -> dict[int, int]:
    """``{logical id: physical id}`` for every device this process can use, logical ids from 0.

    The logical id is what ``torch.npu.set_device`` and ``LLMConfig.device_id`` take; the physical id is
    what ``hccn_tool -i``, the rank table and ``/dev/davinciN`` name (see the module docstring).
    Without ``/dev/davinciN`` nodes (nothing to map through) the runtime's ids are taken as physical.

    :raises DeviceError: when ``ASCEND_RT_VISIBLE_DEVICES`` is malformed or names a device this
        host (or container) does not have.
    """
    env = os.environ if env is None else env
    nodes = visible_devices(dev_dir)
    value = env.get("ASCEND_RT_VISIBLE_DEVICES", "").strip()
    runtime_ids = parse_visible_devices(value) if value else list(range(len(nodes)))
    if not nodes:
        return dict(enumerate(runtime_ids))
    missing = [n for n in runtime_ids if n >= len(nodes)]
    if missing:
        shown = ",".join(f"davinci{n}" for n in nodes)
        raise DeviceError(
            f"ASCEND_RT_VISIBLE_DEVICES={value} names device {missing[0]}, but this host has "
            f"{len(nodes)} NPU(s) ({shown}), i.e. devices 0..{len(nodes) - 1}: list devices below "
            f"{len(nodes)} (in a container, its devices count from 0) or unset the variable"
        )
    return {index: nodes[n] for index, n in enumerate(runtime_ids)}


def physical_id(device_id: int, env: Mapping[str, str] | None = None) -> int:
    """The physical id of logical device ``device_id`` (the id ``torch.npu.set_device`` takes).

    :raises DeviceError: when ``ASCEND_RT_VISIBLE_DEVICES`` is malformed or hides ``device_id``.
    """
    env = os.environ if env is None else env
    mapping = device_map(env)
    if device_id in mapping:
        return mapping[device_id]
    value = env.get("ASCEND_RT_VISIBLE_DEVICES", "").strip()
    if value:
        raise DeviceError(
            f"device {device_id} is not visible: ASCEND_RT_VISIBLE_DEVICES={value} exposes logical ids "
            f"0..{len(mapping) - 1}; pick one of those or unset the variable"
        )
    if not mapping:  # no /dev/davinciN to check against
        return device_id
    nodes = ",".join(f"davinci{p}" for p in mapping.values())
    raise DeviceError(
        f"device {device_id} is not visible: this host has {len(mapping)} NPU(s), logical ids "
        f"0..{len(mapping) - 1} (/dev: {nodes}); pick one of those"
    )


def find_hccn_tool(env: Mapping[str, str] | None = None) -> str:
    """Path of ``hccn_tool``: on ``PATH`` first, then under the driver install.

    :raises DeviceError: when neither has it.
    """
    env = os.environ if env is None else env
    found = shutil.which("hccn_tool", path=env.get("PATH", os.defpath))
    if found:
        return found
    bundled = ascend_root(env) / "driver" / "tools" / "hccn_tool"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    raise DeviceError(
        f"hccn_tool not found on PATH nor at {bundled}: it ships with the Ascend driver; "
        f"export PATH=$PATH:{bundled.parent} (or set KVTEST_ASCEND_ROOT to the driver's install root)"
    )


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "(no output)"


def _exec_hccn(args: Sequence[str], timeout: float) -> tuple[int, str, str]:
    """Run hccn_tool; return (exit code, stdout, stdout+stderr). Retries while the tool says it is busy."""
    tool = find_hccn_tool()
    command = "hccn_tool " + " ".join(args)
    for attempt in range(_BUSY_RETRIES):
        try:
            proc = subprocess.run([tool, *args], capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise DeviceError(
                f"{command} did not answer within {timeout:g}s: check the driver (npu-smi info)"
            ) from None
        except OSError as exc:
            raise DeviceError(f"{command} could not run: {exc}: check that {tool} is executable") from None
        output = proc.stdout + proc.stderr
        if _BUSY in output and attempt + 1 < _BUSY_RETRIES:
            # hccn_tool refuses concurrent callers; the documented remedy is to retry a little later
            time.sleep(0.5 * (attempt + 1))
            continue
        return proc.returncode, proc.stdout, output
    raise AssertionError("unreachable")  # pragma: no cover


def _tool_failed(args: Sequence[str], code: int, output: str) -> DeviceError:
    return DeviceError(
        f"hccn_tool {' '.join(args)} failed (exit {code}): {_first_line(output)}: "
        "check the device id and the driver (npu-smi info)" + _hccn_conf_note()
    )


def _hccn_conf_note() -> str:
    """Why hccn_tool may fail in a container: the host's device-network plan was not mounted."""
    if HCCN_CONF.exists():
        return ""
    return (
        f"; {HCCN_CONF} is missing (a container needs the host's: mount it read-only, "
        f"e.g. -v {HCCN_CONF}:{HCCN_CONF}:ro)"
    )


def _run_hccn(args: Sequence[str], timeout: float) -> str:
    code, stdout, output = _exec_hccn(args, timeout)
    if code != 0:
        raise _tool_failed(args, code, output)
    return stdout


_NO_IP = re.compile(r"(not\s+config|no\s+ip|not\s+set|not\s+exist)", re.IGNORECASE)


def parse_device_ip(output: str, device_id: int) -> str:
    """The address on the ``ipaddr:x.x.x.x`` line of ``hccn_tool -i N -ip -g``.

    :raises DeviceError: when no IP is configured or the output has no valid ``ipaddr:`` line.
    """
    no_ip = (
        f"device {device_id} has no IP configured (hccn_tool -i {device_id} -ip -g): "
        f"configure one with hccn_tool -i {device_id} -ip -s address <ip> netmask <mask> "
        "(see the cluster's network plan)"
    )
    for line in output.splitlines():
        key, sep, value = line.strip().partition(":")
        if not sep or key.strip().lower() != "ipaddr":
            continue
        value = value.strip()
        if not value or value == "0.0.0.0":
            raise DeviceError(no_ip)
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            break
    if _NO_IP.search(output):
        raise DeviceError(no_ip)
    raise DeviceError(
        f"hccn_tool -i {device_id} -ip -g printed no valid 'ipaddr:' line (got {_first_line(output)!r}): "
        "check that hccn_tool matches the installed driver"
    )


def device_ip(device_id: int, timeout: float = 10.0) -> str:
    """The device IP of *physical* device ``device_id`` (``hccn_tool -i N -ip -g``)."""
    args = ["-i", str(device_id), "-ip", "-g"]
    code, stdout, output = _exec_hccn(args, timeout)
    if code != 0 and not _NO_IP.search(output):
        raise _tool_failed(args, code, output)
    # some driver versions exit non-zero when no address is set; parse_device_ip names that case
    return parse_device_ip(output if code != 0 else stdout, device_id)


_PING_STATS = re.compile(r"(\d+)\s+packets?\s+transmitted,\s*(\d+)\s+(?:packets?\s+)?received", re.IGNORECASE)
_PING_REPLY = re.compile(r"^\s*recv\s+seq=", re.IGNORECASE | re.MULTILINE)


def parse_ping(output: str, device_id: int, address: str) -> PingResult:
    """Read the packet counts of ``hccn_tool -ping`` (the summary line, else the ``recv seq=`` replies).

    :raises DeviceError: when the output has neither.
    """
    match = _PING_STATS.search(output)
    if match:
        return PingResult(device_id, address, int(match.group(1)), int(match.group(2)))
    replies = len(_PING_REPLY.findall(output))
    if replies:
        return PingResult(device_id, address, replies, replies)
    raise DeviceError(
        f"hccn_tool -i {device_id} -ping -g address {address} printed no packet counts "
        f"(got {_first_line(output)!r}): check that hccn_tool matches the installed driver"
    )


def ping(device_id: int, address: str, timeout: float = 30.0) -> PingResult:
    """Ping ``address`` from *physical* device ``device_id`` over the device network."""
    args = ["-i", str(device_id), "-ping", "-g", "address", address]
    code, _, output = _exec_hccn(args, timeout)
    try:
        return parse_ping(output, device_id, address)
    except DeviceError:
        # a non-zero exit with packet counts is a lost ping, not a broken tool
        if code != 0:
            raise _tool_failed(args, code, output) from None
        raise


_TLS_SWITCH = re.compile(r"tls\s+switch\s*\[\s*(\d+)\s*\]", re.IGNORECASE)


def parse_tls(output: str, device_id: int) -> bool:
    """The ``tls switch[N]`` value of ``hccn_tool -i N -tls -g`` (``1`` = enabled).

    :raises DeviceError: when the output has no ``tls switch[...]``.
    """
    match = _TLS_SWITCH.search(output)
    if not match:
        raise DeviceError(
            f"hccn_tool -i {device_id} -tls -g printed no 'tls switch[...]' (got {_first_line(output)!r}): "
            "check that hccn_tool matches the installed driver"
        )
    return match.group(1) != "0"


def tls_enabled(device_id: int, timeout: float = 10.0) -> bool:
    """Whether TLS is on for *physical* device ``device_id``; devices with different settings cannot link."""
    return parse_tls(_run_hccn(["-i", str(device_id), "-tls", "-g"], timeout), device_id)
