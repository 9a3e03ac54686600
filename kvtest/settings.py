"""kvtest's settings: one frozen record, one resolver, one precedence rule.

Each option is a command-line flag, an ini key and a ``KVTEST_*`` environment variable. The first that
is set wins, in this order (high to low): test marker, command line, environment, ini file, default.
Every value is checked where it is parsed; a bad one is a :class:`pytest.UsageError` naming the value,
where it came from and the fix.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import pytest

from kvtest.roles.engines import (
    LAUNCHER_PORT,
    Launch,
    LaunchError,
    assign_role,
    detect,
    parse_launcher,
    parse_role_map,
    topology_of,
)
from kvtest.roles.topology import Topology, parse_role_name, parse_topology

__all__ = [
    "OPTIONS",
    "PRECEDENCE",
    "PROFILES",
    "PROFILE_TIMEOUTS",
    "Rendezvous",
    "Settings",
    "OTHER_ENV",
    "parse_rendezvous",
    "resolve",
    "unknown_names",
    "usage_error",
]

T = TypeVar("T")

PRECEDENCE = "marker > command line > environment (KVTEST_*) > ini file > default"
PROFILES = ("smoke", "nightly", "stress")
ROLES = ("p", "d")


@dataclass(frozen=True)
class Rendezvous:
    """Where the processes of one run meet: a TCPStore hosted by p0, or a FileStore on a shared path."""

    scheme: str  # "tcp" or "file"
    host: str = ""
    port: int = 0
    path: str = ""
    #: who hosts the TCPStore: "p0"; "rank0", the launcher's rank 0 whatever its role; "agent",
    #: torchrun's agent (every role joins as a client)
    hosted_by: str = "p0"

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        return f"tcp://{self.address}"

    @property
    def address(self) -> str:
        """``HOST:PORT`` of a TCP rendezvous (``[V6]:PORT``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def describe(self) -> str:
        """For the header: the address and who hosts the store there."""
        if self.hosted_by == "agent":
            return f"torchrun's agent store at {self.address}"
        if self.hosted_by == "rank0":
            return f"{self} (hosted by the launcher's rank 0)"
        return str(self)


@dataclass(frozen=True)
class Settings:
    """The resolved settings of this process (see :data:`PRECEDENCE`)."""

    role: str | None = None  # None: local mode, this process leads and starts the others
    rank: int = 0
    topology: Topology | None = None  # None: local mode derives it from the collected tests
    rendezvous: Rendezvous | None = None
    run_id: str | None = None
    backend: str = "auto"
    device_ids: tuple[int, ...] = ()
    local_host_ip: str | None = None
    remote_host_ips: tuple[str, ...] = ()
    timeout: float = 60.0
    profile: str = "smoke"
    results: Path | None = None
    seed: int = 20260801
    logs: Path = Path("kvtest-logs")
    dead_after: float = 5.0
    join_timeout: float = 120.0
    #: sync_kv_timeout (ms) of an LLMDataDist whose test sets none; None: the package's own default
    sync_kv_timeout: int | None = None
    vendor_samples: Path | None = None
    token_file: Path | None = None
    threads: int | None = None  # None: auto (local mode: a share of the cores; by hand: torch's default)
    launcher: str = "auto"
    role_map: Mapping[str, tuple[int, ...]] | None = None
    #: what the launcher's environment said (None: no launcher, or --role given)
    launch: Launch | None = None
    artifacts: Path | None = None  # each role's JUnit XML and log under <artifacts>/<run id>/<role>/
    require_same_stack: bool = False
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def local_mode(self) -> bool:
        return self.role is None

    @property
    def role_name(self) -> str:
        return f"{self.role or 'p'}{self.rank}"

    @property
    def is_leader(self) -> bool:
        return self.role_name == "p0"

    @property
    def hosts_store(self) -> bool:
        """Whether this process hosts the run's TCPStore: p0, unless a launcher placed the store.

        Under a launcher the store is where every rank can find it: torchrun's agent (nobody here
        hosts), else the launcher's rank 0 at its leader address, whichever role that rank plays.
        """
        rdv = self.rendezvous
        if rdv is not None and rdv.hosted_by == "agent":
            return False
        if rdv is not None and rdv.hosted_by == "rank0" and self.launch is not None:
            return self.launch.rank == 0
        return self.is_leader

    def store_host_name(self) -> str:
        """Who hosts the run's store, for messages: ``p0``, torchrun's agent, or the launcher's rank 0."""
        rdv = self.rendezvous
        if rdv is not None and rdv.hosted_by == "agent":
            return "torchrun's agent"
        if rdv is not None and rdv.hosted_by == "rank0" and self.launch is not None and self.topology:
            rank0 = assign_role(replace(self.launch, rank=0), self.topology, self.role_map)
            return f"{rank0} (launcher rank 0)"
        return "p0"

    def device_id(self) -> int | None:
        """This process's (logical) device: the one id given, or the entry at this rank of a list.

        In local mode this process is p0, the first role, so the list's first entry is also right
        there; the other local roles are given their own id by :meth:`local_device_ids`.
        """
        if not self.device_ids:
            return None
        if len(self.device_ids) == 1:
            return self.device_ids[0]
        return self.device_ids[self.rank]

    def local_device_ids(self, roles: Sequence[str]) -> dict[str, int]:
        """Local mode: each role's device. One id is every role's; a list has one id per role, in
        the order of ``roles`` (the topology's: p0, p1, .., d0, d1, ..). No ids: an empty dict.

        :raises pytest.UsageError: when a list's length is not the number of roles.
        """
        ids = self.device_ids
        if not ids:
            return {}
        if len(ids) == 1:
            return {role: ids[0] for role in roles}
        if len(ids) != len(roles):
            raise usage_error(
                ",".join(map(str, ids)),
                self.sources.get("device_ids", "the command line"),
                f"local mode runs {len(roles)} roles ({', '.join(roles)}) on this host and a list gives "
                f"one id per role in that order, but it has {len(ids)}",
                f"give {len(roles)} ids (e.g. --device-id {','.join(map(str, range(len(roles))))}), or one "
                "id for every role",
            )
        return dict(zip(roles, ids))


def usage_error(value: object, where: str, problem: str, fix: str) -> pytest.UsageError:
    return pytest.UsageError(f"kvtest: {value!r} from {where} is invalid: {problem}; {fix}")


# --- parsers: each takes the raw text and raises ValueError("problem; fix") -------------------------


def parse_role(text: str) -> str:
    value = text.strip().lower()
    if value not in ROLES:
        raise ValueError("the role must be p (prefill) or d (decode); e.g. --role p")
    return value


def _parse_int(text: str, low: int, high: int, what: str) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"{what} must be a whole number from {low} to {high}") from None
    if not low <= value <= high:
        raise ValueError(f"{what} must be from {low} to {high}")
    return value


def parse_rank(text: str) -> int:
    return _parse_int(text, 0, 15, "the rank")


def parse_seed(text: str) -> int:
    return _parse_int(text, 0, 2**63 - 1, "the seed")


def _parse_seconds(text: str, low: float, high: float, what: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{what} must be a number of seconds, e.g. 30") from None
    if not low < value <= high:
        raise ValueError(f"{what} must be more than {low:g} and at most {high:g} seconds")
    return value


#: the step timeout when none is given: nightly and stress cases move and check GiB in one step
PROFILE_TIMEOUTS = {"smoke": 60.0, "nightly": 600.0, "stress": 1800.0}


def parse_timeout(text: str) -> float:
    return _parse_seconds(text, 0, 3600, "the step timeout")


def parse_dead_after(text: str) -> float:
    return _parse_seconds(text, 0.5, 600, "the dead-peer delay")


def parse_join_timeout(text: str) -> float:
    return _parse_seconds(text, 0, 86400, "the join timeout")


def parse_sync_kv_timeout(text: str) -> int:
    try:
        return _parse_int(text, 1, 2**31 - 1, "sync_kv_timeout")
    except ValueError:
        raise ValueError("sync_kv_timeout must be a whole number of milliseconds from 1 to 2147483647, "
                         "e.g. --kv-sync-kv-timeout 5000") from None


def parse_threads(text: str) -> int | None:
    value = text.strip().lower()
    if value == "auto":
        return None
    try:
        return _parse_int(value, 1, 1024, "the thread count")
    except ValueError:
        raise ValueError("threads per process must be auto or a whole number from 1 to 1024; "
                         "e.g. --kv-threads 2, or auto for a share of the cores") from None


def parse_topology_option(text: str) -> Topology:
    return parse_topology(text)


def parse_backend(text: str) -> str:
    value = text.strip().lower()
    if value not in ("auto", "npu", "sim"):
        raise ValueError("the backend must be auto, npu or sim")
    return value


def parse_profile(text: str) -> str:
    value = text.strip().lower()
    if value not in PROFILES:
        raise ValueError(f"the profile must be one of {', '.join(PROFILES)}")
    return value


def parse_device_ids(text: str) -> tuple[int, ...]:
    parts = [p for p in re.split(r"[,;\s]+", text.strip()) if p]
    if not parts:
        raise ValueError("give one device id (e.g. 0) or one per rank (e.g. 0,1)")
    ids = tuple(_parse_int(p, 0, 63, "a device id") for p in parts)
    if len(set(ids)) != len(ids):
        raise ValueError("a device id appears twice; give each rank its own device")
    return ids


def parse_ip(text: str) -> str:
    value = text.strip()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("expected an IP address such as 192.0.2.10") from None


def parse_ip_list(text: str) -> tuple[str, ...]:
    parts = [p for p in re.split(r"[,;\s]+", text.strip()) if p]
    if not parts:
        raise ValueError("expected one IP address or a comma-separated list, e.g. 192.0.2.11")
    ips = tuple(parse_ip(p) for p in parts)
    if len(set(ips)) != len(ips):
        dup = next(ip for ip in ips if ips.count(ip) > 1)
        raise ValueError(f"{dup} is listed twice; list each peer host once")
    return ips


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` with a port from 1 to 65535."""
    value = text.strip()
    match = re.match(r"^\[(?P<v6>[^\]]+)\]:(?P<p6>[^:]*)$|^(?P<host>[^:\[\]]+):(?P<port>[^:]*)$", value)
    if not match:
        raise ValueError("expected HOST:PORT, e.g. 192.0.2.10:29500")
    host = match.group("v6") or match.group("host")
    port_text = match.group("p6") if match.group("v6") else match.group("port")
    port = _parse_int(port_text or "x", 1, 65535, "the port")
    if not re.match(r"^[A-Za-z0-9.\-:]+$", host):
        raise ValueError(f"{host!r} is not a host name or IP address")
    return host, port


def parse_rendezvous(text: str) -> Rendezvous:
    value = text.strip()
    parts = urlsplit(value)
    if parts.scheme == "tcp":
        host, port = parse_host_port(value[len("tcp://") :].rstrip("/"))
        return Rendezvous("tcp", host=host, port=port)
    if parts.scheme == "file":
        path = Path(parts.path)
        if not parts.path or not path.is_absolute():
            raise ValueError("a FileStore needs an absolute path, e.g. file:///shared/kvtest/run1")
        parent = path.parent
        if not parent.is_dir():
            raise ValueError(f"the directory {parent} does not exist; create it or pick another path")
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise ValueError(f"{path} is not writable; pick a path every role can write")
        return Rendezvous("file", path=str(path))
    raise ValueError("expected tcp://HOST:PORT (p0 hosts it) or file:///PATH (a shared file system)")


def parse_run_id(text: str) -> str:
    value = text.strip()
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", value):
        raise ValueError("a run id is 1-64 letters, digits, '.', '_' or '-', e.g. nightly-42")
    return value


def parse_path(text: str) -> Path:
    value = text.strip()
    if not value:
        raise ValueError("expected a file path")
    return Path(value)


def parse_results(text: str) -> Path:
    path = parse_path(text)
    parent = path.resolve().parent
    if not parent.is_dir():
        raise ValueError(f"the directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"the directory {parent} is not writable")
    return path


def parse_vendor_samples(text: str) -> Path:
    path = parse_path(text)
    if not path.is_dir():
        raise ValueError(
            f"the folder {path} does not exist; give the folder holding the vendor's sample scripts "
            "(hicann/hixl examples/python/llm_datadist, also shipped with CANN)"
        )
    return path


def parse_artifacts(text: str) -> Path:
    path = parse_path(text)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a folder; give a folder (it is created when missing)")
    existing = path.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{existing} is not a writable folder, so {path} cannot be made there; pick another")
    return path.resolve()


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_switch(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"a switch is one of {'/'.join(_TRUE)} or {'/'.join(_FALSE)}, e.g. 1 or 0")


@dataclass(frozen=True)
class Option(Generic[T]):
    """One setting: its flag, ini key, environment variable, parser and help text."""

    dest: str
    flag: str
    parse: Callable[[str], T]
    default: T
    help: str
    metavar: str = "VALUE"
    #: a switch: the flag takes no value on the command line (``--flag`` means on); the environment
    #: and the ini file take 1/0, true/false, yes/no or on/off (see :func:`parse_switch`)
    switch: bool = False

    @property
    def ini(self) -> str:
        return "kv_" + self.dest

    @property
    def env(self) -> str:
        return "KVTEST_" + self.dest.upper()

    @property
    def cli_dest(self) -> str:
        return "kvtest_" + self.dest


OPTIONS: tuple[Option[Any], ...] = (
    Option(
        "role",
        "--role",
        parse_role,
        None,
        "this process's role: p (prefill) or d (decode). "
        "Unset: local mode, this process leads and starts every other role here.",
        "p|d",
    ),
    Option("rank", "--rank", parse_rank, 0, "this process's rank within its role (xPyD), from 0.", "N"),
    Option(
        "topology",
        "--topology",
        parse_topology_option,
        None,
        "how many p and d processes take "
        "part: 1p1d, 2p1d, 1p2d, 2p2d, any XpYd (default: 1p1d; local mode: what the tests need).",
        "XpYd",
    ),
    Option(
        "rendezvous",
        "--rendezvous",
        parse_rendezvous,
        None,
        "where the processes meet: "
        "tcp://HOST:PORT (hosted by p0) or file:///PATH (shared file system; needs --run-id).",
        "URL",
    ),
    Option(
        "run_id",
        "--run-id",
        parse_run_id,
        None,
        "the run's id; every store key carries it (default: p0 makes a fresh one).",
        "ID",
    ),
    Option(
        "backend",
        "--backend",
        parse_backend,
        "auto",
        "auto, npu or sim. auto takes npu when "
        "llm_datadist and torch_npu import and a device is visible, else sim. npu never falls back.",
        "NAME",
    ),
    Option(
        "device_ids",
        "--device-id",
        parse_device_ids,
        (),
        "logical NPU id (as torch.npu.set_device takes it). Local mode: one id for every role, or "
        "one per role in the order p0,p1..,d0,d1.. (1p1d: --device-id 0,1 gives p0 0 and d0 1). "
        "With --role: one id, or one per rank of that role. Default: a free NPU from the host's pool.",
        "ID[,ID]",
    ),
    Option(
        "local_host_ip",
        "--local-host-ip",
        parse_ip,
        None,
        "this host's IP, as the samples take it (default: derived from the rendezvous connection).",
        "IP",
    ),
    Option(
        "remote_host_ips",
        "--remote-host-ip",
        parse_ip_list,
        (),
        "the peer hosts' IPs, as the samples take them (default: what the peers report over the rendezvous).",
        "IP[,IP]",
    ),
    Option(
        "timeout",
        "--kv-timeout",
        parse_timeout,
        60.0,
        "seconds one step (barrier, fetch, result) may wait for the peers before it fails "
        "(default: 60 for smoke, 600 for nightly, 1800 for stress).",
        "SECONDS",
    ),
    Option(
        "profile", "--kv-profile", parse_profile, "smoke", "test sizes: smoke (CI), nightly, stress.", "NAME"
    ),
    Option(
        "results",
        "--kv-results",
        parse_results,
        None,
        "write the results JSON (outcomes, transfers, fingerprint) to this file.",
        "PATH",
    ),
    Option("seed", "--kv-seed", parse_seed, 20260801, "seed of the KV contents (same on every role).", "N"),
    Option(
        "logs",
        "--kv-logs",
        parse_path,
        Path("kvtest-logs"),
        "local mode: folder for the other roles' logs.",
        "DIR",
    ),
    Option(
        "dead_after",
        "--kv-dead-after",
        parse_dead_after,
        5.0,
        "seconds of heartbeat silence after which a peer is reported dead.",
        "SECONDS",
    ),
    Option(
        "join_timeout",
        "--kv-join-timeout",
        parse_join_timeout,
        120.0,
        "seconds to wait for the rendezvous and for every role to join.",
        "SECONDS",
    ),
    Option(
        "sync_kv_timeout",
        "--kv-sync-kv-timeout",
        parse_sync_kv_timeout,
        None,
        "milliseconds one pull or push may take (LLMConfig.sync_kv_timeout) in every LLMDataDist a test "
        "makes with kvtest's datadist fixture and no timeout of its own (default: the package's, 1000).",
        "MS",
    ),
    Option(
        "vendor_samples",
        "--kv-vendor-samples",
        parse_vendor_samples,
        None,
        "also run the vendor's llm_datadist sample scripts found in this folder, each as one test "
        "(vendor/<script>), both roles through kvtest run with the vendor's run_example.sh arguments.",
        "DIR",
    ),
    Option(
        "token_file",
        "--kv-token-file",
        parse_path,
        None,
        "a file holding the run's shared secret; every role signs what it writes to the rendezvous "
        "with it and refuses what is not signed (the secret itself may come in KVTEST_TOKEN instead; "
        "local mode makes one).",
        "PATH",
    ),
    Option(
        "threads",
        "--kv-threads",
        parse_threads,
        None,
        "torch intra-op threads per kvtest process: N, or auto (default: local mode gives each process "
        "on this host an equal share of the cores; a role started by hand keeps torch's default).",
        "N|auto",
    ),
    Option(
        "launcher",
        "--kv-launcher",
        parse_launcher,
        "auto",
        "take role, rank and rendezvous from the launcher that started this process: auto (detect "
        "torchrun, LeaderWorkerSet, Ascend Operator, Open MPI/MPICH, Slurm srun), none, or one of "
        "torchrun|ascend-operator|lws|mpi|slurm. --role wins over it.",
        "NAME",
    ),
    Option(
        "role_map",
        "--kv-role-map",
        parse_role_map,
        None,
        "which launcher ranks play which role, e.g. 'p=2,3 d=0,1' (default: ranks in topology order, "
        "p0..p{X-1} then d0..).",
        "'p=R,.. d=R,..'",
    ),
    Option(
        "artifacts",
        "--kv-artifacts",
        parse_artifacts,
        None,
        "folder for every role's own files: DIR/<run id>/<role>/junit.xml (that role's JUnit XML) and "
        "DIR/<run id>/<role>/kvtest.log (kvtest's session lines: run, topology, rendezvous, threads, "
        "handshake and stack differences; then each test's outcome with its failure text), on every "
        "role, local-mode children included; p0 also writes DIR/<run id>/results.json unless "
        "--kv-results names a file.",
        "DIR",
    ),
    Option(
        "require_same_stack",
        "--kv-require-same-stack",
        parse_switch,
        False,
        "refuse to start (every role: a usage error, exit 4) when the roles' stacks differ: CANN, "
        "driver, firmware, torch, torch_npu or llm_datadist version (without it the differences are "
        "printed and stored). A switch; KVTEST_REQUIRE_SAME_STACK / kv_require_same_stack take 1 or 0.",
        "",
        switch=True,
    ),
)

OPTIONS_BY_DEST = {o.dest: o for o in OPTIONS}


def _where_cli(option: Option[Any]) -> str:
    return f"the command line ({option.flag})"


def _where_env(option: Option[Any]) -> str:
    return f"the environment ({option.env})"


def _where_ini(option: Option[Any], inifile: str) -> str:
    return f"the ini file ({option.ini} in {inifile})"


def parse_option(option: Option[T], raw: str, where: str) -> T:
    try:
        return option.parse(raw)
    except ValueError as exc:
        problem, _, fix = str(exc).partition("; ")
        raise usage_error(raw, where, problem, fix or f"see pytest --help, {option.flag}") from exc


def resolve(
    cli: Mapping[str, str | None],
    env: Mapping[str, str],
    ini: Mapping[str, str],
    inifile: str = "pytest.ini",
) -> Settings:
    """Resolve every option (command line > environment > ini > default), then check combinations."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        candidates: Sequence[tuple[str | None, str]] = (
            (cli.get(option.dest), _where_cli(option)),
            (env.get(option.env), _where_env(option)),
            (ini.get(option.ini), _where_ini(option, inifile)),
        )
        for raw, where in candidates:
            if raw is not None and raw != "":
                values[option.dest] = parse_option(option, raw, where)
                sources[option.dest] = where
                break
        else:
            values[option.dest] = option.default
            sources[option.dest] = "default"
    if sources["timeout"] == "default":
        values["timeout"] = PROFILE_TIMEOUTS[values["profile"]]
    settings = apply_launch(Settings(**values, sources=sources), env)
    check_combinations(settings)
    return settings


def apply_launch(s: Settings, env: Mapping[str, str]) -> Settings:
    """Role, rank, topology and rendezvous from the launcher's environment (see kvtest.roles.engines).

    Explicit ``--role``/``--rank`` win: the launcher is not consulted. A launch of one process (auto
    detection only) is an ordinary local run.
    """
    where = s.sources.get
    if s.role is not None or where("rank", "default") != "default":
        if s.role_map is not None:
            raise pytest.UsageError(
                f"kvtest: --kv-role-map from {where('role_map')} maps launcher ranks, but --role from "
                f"{where('role')} sets the role by hand; drop one of them"
            )
        return s
    try:
        launch = detect(env, s.launcher)
    except LaunchError as exc:
        chosen = f" (--kv-launcher {s.launcher} from {where('launcher')})" if s.launcher != "auto" else ""
        raise pytest.UsageError(f"kvtest: {exc}{chosen}") from None
    if launch is None or (launch.world_size == 1 and s.launcher == "auto"):
        if s.role_map is not None:
            raise pytest.UsageError(
                f"kvtest: --kv-role-map from {where('role_map')} needs a launcher, and none started this "
                "process (or it started one process); start kvtest under torchrun/mpirun/srun/LWS or drop it"
            )
        return s
    said = f"{launch.title} ({launch.evidence})"
    topology = s.topology
    if topology is None and s.role_map is not None:
        topology = topology_of(s.role_map)
    if topology is None:
        if launch.world_size != 2:
            raise pytest.UsageError(
                f"kvtest: {launch.title} runs {launch.world_size} processes ({launch.evidence}) and no "
                "--topology says how many are p and d; give it on every rank, e.g. --topology "
                f"{_example_topology(launch.world_size)}"
            )
        topology = Topology(1, 1)
    roles = len(topology.roles)
    if roles != launch.world_size:
        raise pytest.UsageError(
            f"kvtest: {launch.title} runs {launch.world_size} processes ({launch.evidence}) but topology "
            f"{topology} (from {where('topology')}) has {roles} roles; start {roles} processes or give "
            f"--topology {_example_topology(launch.world_size)}"
        )
    if s.role_map is not None and topology_of(s.role_map) != topology:
        raise pytest.UsageError(
            f"kvtest: --kv-role-map from {where('role_map')} maps {topology_of(s.role_map)} but topology "
            f"{topology} (from {where('topology')}) is asked; make them agree"
        )
    try:
        role, rank = parse_role_name(assign_role(launch, topology, s.role_map))
    except LaunchError as exc:
        raise pytest.UsageError(f"kvtest: {exc} (--kv-role-map from {where('role_map')})") from None
    rendezvous = s.rendezvous
    sources = dict(s.sources, role=said, rank=said)
    if where("topology") == "default":
        sources["topology"] = f"{launch.title}'s world size {launch.world_size}" + (
            " and the role map" if s.role_map is not None else ""
        )
    if rendezvous is not None and rendezvous.scheme == "tcp":
        # the same command on every rank names one address: the launcher's rank 0 is there
        rendezvous = replace(rendezvous, hosted_by="rank0")
    if rendezvous is None:
        if launch.agent_store:
            assert launch.leader_host is not None and launch.store_port is not None
            rendezvous = Rendezvous("tcp", host=launch.leader_host, port=launch.store_port, hosted_by="agent")
        elif launch.leader_host is not None:
            port = launch.store_port or LAUNCHER_PORT
            rendezvous = Rendezvous("tcp", host=launch.leader_host, port=port, hosted_by="rank0")
        else:
            raise pytest.UsageError(
                f"kvtest: {launch.title} names no leader host for the run's store ({launch.evidence}); "
                "export MASTER_ADDR=<rank 0's host> to every rank (mpirun -x MASTER_ADDR) or give "
                f"--rendezvous tcp://HOST:{LAUNCHER_PORT}"
            )
        sources["rendezvous"] = said
    return replace(s, role=role, rank=rank, topology=topology, rendezvous=rendezvous, launch=launch,
                   sources=sources)


def _example_topology(world_size: int) -> str:
    half = max(world_size // 2, 1)
    return f"{half}p{max(world_size - half, 1)}d"


def check_combinations(s: Settings) -> None:
    """The checks that involve more than one option, in one place."""

    def where(dest: str) -> str:
        return s.sources.get(dest, "default")

    if s.role is None:
        for dest in ("rank", "rendezvous"):
            if where(dest) != "default":
                flag = OPTIONS_BY_DEST[dest].flag
                raise pytest.UsageError(
                    f"kvtest: {flag} from {where(dest)} needs --role: give --role p or --role d on "
                    f"each host, or drop {flag} to run every role locally"
                )
        return
    topology = s.topology or Topology(1, 1)
    if s.rank >= topology.count(s.role):
        raise usage_error(
            s.rank,
            where("rank"),
            f"rank {s.rank} is outside topology {topology}, which has "
            f"{topology.count(s.role)} {s.role} process(es)",
            f"use --rank 0..{topology.count(s.role) - 1} or a larger --topology",
        )
    if s.rendezvous is None and s.is_leader:
        raise pytest.UsageError(
            "kvtest: role p0 needs --rendezvous: the address it hosts the run on, which every other role "
            "is given too, e.g. --rendezvous tcp://THIS_HOST:29500 (or drop --role to run every role here)"
        )
    if s.rendezvous is None:
        raise pytest.UsageError(
            f"kvtest: role {s.role_name} needs --rendezvous to find p0: e.g. --rendezvous "
            "tcp://P0_HOST:29500 (the address p0 was started with)"
        )
    if s.rendezvous is not None and s.rendezvous.scheme == "file" and s.run_id is None:
        raise pytest.UsageError(
            f"kvtest: --rendezvous {s.rendezvous} from {where('rendezvous')} needs --run-id: a shared "
            "file outlives a run, so every role must name the same run, e.g. --run-id nightly-$(date +%F)"
        )
    if len(s.device_ids) > 1 and len(s.device_ids) <= s.rank:
        raise usage_error(
            ",".join(map(str, s.device_ids)),
            where("device_ids"),
            f"rank {s.rank} has no entry in the list",
            "give one device id per rank, or a single id",
        )


#: ``KVTEST_*`` variables that are not options: read by the sim, the device pool, the doctor, CI
OTHER_ENV = (
    "KVTEST_SIM_FAULT",
    "KVTEST_SIM_FIXED",
    "KVTEST_SIM_STORE",
    "KVTEST_SIM_NAMESPACE",
    "KVTEST_SIM_ROLE",
    "KVTEST_SHIM_DEVICES",
    "KVTEST_TOKEN",  # the run's secret itself (see --kv-token-file), kept out of argv
    "KVTEST_DEVICE_POOL_DIR",
    "KVTEST_ASCEND_ROOT",
    "KVTEST_HARNESS_FULL",
    "KVTEST_HARNESS_GATE",
    "KVTEST_CI_VENV",
    "KVTEST_SIM_FAULT_SCOPE",
    "KVTEST_UPSTREAM_SOURCES",  # kvtest upstream: the pinned archives' folder, its cache
    "KVTEST_UPSTREAM_CACHE",
    "KVTEST_REQUIRE_UPSTREAM",  # the upstream harness tests fail instead of skipping without a build
    "KVTEST_HCCL_DIR",  # kvtest's HCCL transport under the real llm_datadist
    "KVTEST_HCCL_FAULT",
    "KVTEST_HCCL_TRACE",
    "KVTEST_HCCN_CONF",
    "KVTEST_RUN_BACKEND",  # .ci/npu-on-shims: kvtest run's backend and time limit
    "KVTEST_RUN_TIMEOUT",
)


def unknown_names(env: Mapping[str, str], ini_keys: Sequence[str]) -> list[str]:
    """One warning per ``KVTEST_*`` variable or ``kv_*`` ini key kvtest does not know, naming the closest.

    A typo (``KVTEST_PROFLE=nightly``) is otherwise silently ignored.
    """
    import difflib

    known_env = [o.env for o in OPTIONS] + list(OTHER_ENV)
    known_ini = [o.ini for o in OPTIONS]
    found = [("environment variable", name, known_env) for name in sorted(env) if name.startswith("KVTEST_")]
    found += [("ini key", name, known_ini) for name in sorted(ini_keys) if name.startswith("kv_")]
    out = []
    for kind, name, known in found:
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"kvtest's are {', '.join(known)}"
        out.append(f"kvtest ignores the unknown {kind} {name}: {hint}")
    return out
