"""The launch engines our users already run, and what each one's environment says about this process.

Every engine starts the same command on every node and tells each process who it is through its
environment. :func:`detect` reads it:

================  =====================================================  ==============================
engine            rank, world size (local size)                          where the leader is
================  =====================================================  ==============================
torchrun          RANK, WORLD_SIZE (LOCAL_WORLD_SIZE), TORCHELASTIC_*    MASTER_ADDR:MASTER_PORT (the
                                                                         agent's store when
                                                                         TORCHELASTIC_USE_AGENT_STORE)
lws               LWS_WORKER_INDEX, LWS_GROUP_SIZE (1 per pod)           LWS_LEADER_ADDRESS
ascend-operator   RANK (the pod), WORLD_SIZE / LOCAL_WORLD_SIZE (NPUs:  MASTER_ADDR:MASTER_PORT (its
                  all / per pod), no TORCHELASTIC_*                      Service, ascendjob-port)
mpi               OMPI_COMM_WORLD_RANK/SIZE/LOCAL_SIZE (Open MPI),       MASTER_ADDR, or this host when
                  PMI_RANK/PMI_SIZE, MPI_LOCALNRANKS (MPICH, Intel MPI)  every rank runs here
slurm             SLURM_PROCID, SLURM_STEP_NUM_TASKS or SLURM_NTASKS     MASTER_ADDR, or the step's
                  (an srun step only: SLURM_STEP_ID)                     first node
================  =====================================================  ==============================

The launcher's rank ``r`` becomes a kvtest role in topology order (``p0..p{X-1}``, then ``d0..``), or
as a role map says (``p=2,3 d=0,1``, as vllm-ascend's ``prefiller_host_index``/``decoder_host_index``).
This module only reads; :mod:`kvtest.settings` turns a :class:`Launch` into settings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from kvtest.roles.topology import Topology, role_name

__all__ = [
    "ENGINES",
    "LAUNCHER_CHOICES",
    "LAUNCHER_PORT",
    "Launch",
    "LaunchError",
    "assign_role",
    "detect",
    "parse_launcher",
    "parse_role_map",
]

#: the port a launched run's store is hosted on when the launcher offers none of its own. Not 29500:
#: torchrun and the vendor's samples both default to it, and a worker there collides with them.
LAUNCHER_PORT = 29517

ENGINES = ("torchrun", "lws", "ascend-operator", "mpi", "slurm")
LAUNCHER_CHOICES = ("auto", "none", *ENGINES)

_TITLES = {
    "torchrun": "torchrun",
    "lws": "LeaderWorkerSet",
    "ascend-operator": "Ascend Operator",
    "mpi": "MPI",
    "slurm": "Slurm",
}


class LaunchError(ValueError):
    """The launcher's environment cannot be used; ``str()`` is "problem; fix" on one line."""


@dataclass(frozen=True)
class Launch:
    """What the launcher's environment says about this process."""

    engine: str  # one of ENGINES
    rank: int
    world_size: int
    #: how many of the run's processes share this host (the thread budget's divisor)
    local_size: int
    #: the host every rank can reach where the run's store lives (None: the launcher names none)
    leader_host: str | None
    #: the port the launcher offers for the run's store: torchrun's agent store, or the one port Ascend
    #: Operator's Service forwards to the master pod (MASTER_PORT); None: kvtest's LAUNCHER_PORT
    store_port: int | None
    #: torchrun's agent hosts a store that every worker joins as a client
    agent_store: bool
    #: the variables it was read from, for messages: "RANK=1, WORLD_SIZE=2"
    evidence: str

    @property
    def title(self) -> str:
        return _TITLES[self.engine]


def parse_launcher(text: str) -> str:
    value = text.strip().lower()
    if value not in LAUNCHER_CHOICES:
        raise ValueError(f"the launcher must be one of {'|'.join(LAUNCHER_CHOICES)}; e.g. --kv-launcher auto")
    return value


def _int(env: Mapping[str, str], name: str, low: int = 0) -> int:
    text = env.get(name, "")
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise LaunchError(
            f"{name}={text!r} in the environment is not a whole number; fix the launcher's "
            "environment, or run without it (--kv-launcher none)"
        ) from None
    if value < low:
        raise LaunchError(
            f"{name}={value} in the environment must be at least {low}; fix the launcher's environment"
        )
    return value


def _first(env: Mapping[str, str], *names: str) -> str | None:
    return next((name for name in names if env.get(name, "").strip()), None)


def _evidence(env: Mapping[str, str], *names: str) -> str:
    return ", ".join(f"{name}={env[name]}" for name in names if name in env)


def _torchrun(env: Mapping[str, str], engine: str) -> Launch:
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        if not env.get(name, "").strip():
            raise LaunchError(
                f"{_TITLES[engine]} was chosen but {name} is not in the environment; start kvtest under "
                "the launcher, or choose another with --kv-launcher"
            )
    port = _int(env, "MASTER_PORT", 1) if env.get("MASTER_PORT", "").strip() else None
    local = _int(env, "LOCAL_WORLD_SIZE", 0) if env.get("LOCAL_WORLD_SIZE", "").strip() else 0
    evidence = _evidence(
        env,
        "RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "TORCHELASTIC_USE_AGENT_STORE",
    )
    if engine == "ascend-operator":
        # Ascend Operator (MindCluster docs, "Ascend Operator环境变量说明"; mind-cluster env.go): RANK is
        # the pod's rank, WORLD_SIZE the job's NPUs, LOCAL_WORLD_SIZE each pod's; one kvtest process runs
        # per pod. MASTER_ADDR is the Master's Service and MASTER_PORT (ascendjob-port, 2222 by default)
        # a port that Service is known to forward to the Master pod, so the store goes there.
        world = _int(env, "WORLD_SIZE", 1)
        pods = world // local if local and world % local == 0 else world
        return Launch(engine, _int(env, "RANK"), pods, 1, env["MASTER_ADDR"].strip(), port, False, evidence)
    agent = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if agent and port is None:
        raise LaunchError(
            "torchrun's agent store is on but MASTER_PORT is not in the environment; "
            "start kvtest under torchrun, or give --rendezvous"
        )
    return Launch(
        engine,
        _int(env, "RANK"),
        _int(env, "WORLD_SIZE", 1),
        max(local, 1),
        env["MASTER_ADDR"].strip(),
        port if agent else None,  # without the agent's store, MASTER_PORT is the workers' own rank-0 store
        agent,
        evidence,
    )


def _lws(env: Mapping[str, str]) -> Launch:
    for name in ("LWS_WORKER_INDEX", "LWS_GROUP_SIZE", "LWS_LEADER_ADDRESS"):
        if not env.get(name, "").strip():
            raise LaunchError(
                f"LeaderWorkerSet was chosen but {name} is not in the environment; run kvtest in a "
                "LeaderWorkerSet pod, or choose another with --kv-launcher"
            )
    return Launch(
        "lws",
        _int(env, "LWS_WORKER_INDEX"),
        _int(env, "LWS_GROUP_SIZE", 1),
        1,  # one pod per rank
        env["LWS_LEADER_ADDRESS"].strip(),
        None,
        False,
        _evidence(env, "LWS_WORKER_INDEX", "LWS_GROUP_SIZE", "LWS_LEADER_ADDRESS"),
    )


def _mpi(env: Mapping[str, str]) -> Launch:
    if _first(env, "OMPI_COMM_WORLD_RANK"):
        rank_var, size_var, local_var = (
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_SIZE",
        )
    elif _first(env, "PMI_RANK"):
        rank_var, size_var, local_var = "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"
    else:
        raise LaunchError(
            "MPI was chosen but neither OMPI_COMM_WORLD_RANK (Open MPI) nor PMI_RANK (MPICH) "
            "is in the environment; start kvtest under mpirun, or choose another launcher"
        )
    if not env.get(size_var, "").strip():
        raise LaunchError(f"MPI gives {rank_var} but not {size_var}; fix the launcher's environment")
    size = _int(env, size_var, 1)
    local = _int(env, local_var, 1) if env.get(local_var, "").strip() else 1
    host = env.get("MASTER_ADDR", "").strip() or ("127.0.0.1" if local >= size else None)
    return Launch(
        "mpi",
        _int(env, rank_var),
        size,
        local,
        host,
        None,
        False,
        _evidence(env, rank_var, size_var, local_var, "MASTER_ADDR"),
    )


def _tasks_per_node(text: str) -> int | None:
    """Slurm's ``2(x3),1`` form: the first node's count."""
    match = re.match(r"^\s*(\d+)", text)
    return int(match.group(1)) if match else None


def first_host(nodelist: str) -> str | None:
    """The first host of a Slurm node list: ``node[07-09,12],gpu1`` -> ``node07``."""
    match = re.match(r"^\s*([^,\[\s]+)(?:\[([^\]]+)\])?", nodelist)
    if not match:
        return None
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _slurm(env: Mapping[str, str]) -> Launch:
    if not env.get("SLURM_PROCID", "").strip():
        raise LaunchError(
            "Slurm was chosen but SLURM_PROCID is not in the environment; start kvtest with srun, "
            "or choose another launcher"
        )
    size_var = _first(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
    if size_var is None:
        raise LaunchError("Slurm gives SLURM_PROCID but not SLURM_NTASKS; start kvtest with srun --ntasks N")
    size = _int(env, size_var, 1)
    per_node = _first(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    local = (_tasks_per_node(env[per_node]) if per_node else None) or 1
    host = env.get("MASTER_ADDR", "").strip() or None
    if host is None:
        nodes = _first(env, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
        host = first_host(env[nodes]) if nodes else None
    return Launch(
        "slurm",
        _int(env, "SLURM_PROCID"),
        size,
        local,
        host,
        None,
        False,
        _evidence(env, "SLURM_PROCID", size_var, "MASTER_ADDR", "SLURM_STEP_NODELIST"),
    )


def _is_torchrun(env: Mapping[str, str]) -> bool:
    return bool(env.get("TORCHELASTIC_RUN_ID", "").strip())


def _auto(env: Mapping[str, str]) -> str | None:
    if _is_torchrun(env):
        return "torchrun"
    if env.get("LWS_WORKER_INDEX", "").strip():
        return "lws"
    if all(env.get(name, "").strip() for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR")):
        return "ascend-operator"
    if _first(env, "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        return "mpi"
    # SLURM_PROCID is set in a batch script too; only an srun step is one process per rank
    if env.get("SLURM_PROCID", "").strip() and _first(env, "SLURM_STEP_ID", "SLURM_STEPID"):
        return "slurm"
    return None


def detect(env: Mapping[str, str], choice: str) -> Launch | None:
    """The launch this process is part of, or None (``none``, or ``auto`` and no launcher found).

    :raises LaunchError: a chosen launcher that is absent, or an environment that cannot be read.
    """
    if choice == "none":
        return None
    engine = _auto(env) if choice == "auto" else choice
    if engine is None:
        return None
    if engine in ("torchrun", "ascend-operator"):
        launch = _torchrun(env, engine)
    elif engine == "lws":
        launch = _lws(env)
    elif engine == "mpi":
        launch = _mpi(env)
    else:
        launch = _slurm(env)
    if launch.rank >= launch.world_size:
        raise LaunchError(
            f"{launch.title} gives rank {launch.rank} of a world of {launch.world_size} "
            f"({launch.evidence}); fix the launcher's environment"
        )
    return launch


def parse_role_map(text: str) -> dict[str, tuple[int, ...]]:
    """``p=0,1 d=2,3`` -> ``{"p": (0, 1), "d": (2, 3)}`` (launcher ranks; the order gives the role rank).

    :raises ValueError: "problem; fix" when the text is not of that form or a rank appears twice.
    """
    form = "expected p=RANK[,RANK..] d=RANK[,RANK..], e.g. --kv-role-map 'p=0,1 d=2,3'"
    found: dict[str, tuple[int, ...]] = {}
    # entries are separated by spaces or ';' (or a ',' before the next role: "p=0,d=1")
    for part in [p for p in re.split(r"[\s;]+|,(?=\s*[pdPD]\s*=)", text.strip()) if p]:
        side, eq, ranks = part.partition("=")
        side = side.strip().lower()
        if not eq or side not in ("p", "d") or side in found:
            raise ValueError(f"{part!r} is not a role's entry (each of p and d once); {form}")
        try:
            found[side] = tuple(int(r, 10) for r in ranks.split(",") if r.strip() != "")
        except ValueError:
            raise ValueError(f"{part!r} lists something that is not a rank; {form}") from None
        if not found[side] or any(r < 0 for r in found[side]):
            raise ValueError(f"{part!r} lists no ranks (or a negative one); {form}")
    if set(found) != {"p", "d"}:
        raise ValueError(f"both p and d need ranks; {form}")
    listed = [*found["p"], *found["d"]]
    twice = sorted({r for r in listed if listed.count(r) > 1})
    if twice:
        raise ValueError(f"launcher rank {twice[0]} is mapped to two roles; give each rank one role, {form}")
    return found


def topology_of(role_map: Mapping[str, tuple[int, ...]]) -> Topology:
    return Topology(len(role_map["p"]), len(role_map["d"]))


def assign_role(launch: Launch, topology: Topology, role_map: Mapping[str, tuple[int, ...]] | None) -> str:
    """This process's role name (``p0``, ``d1``...): its launcher rank in topology order, or the map's.

    :raises LaunchError: the map names a rank the launch does not have, or leaves a rank out.
    """
    if role_map is None:
        return topology.roles[launch.rank]
    ranks = {r for side in role_map.values() for r in side}
    missing = sorted(r for r in ranks if r >= launch.world_size)
    if missing:
        raise LaunchError(
            f"the role map names launcher rank {missing[0]}, but {launch.title} runs ranks "
            f"0..{launch.world_size - 1} ({launch.evidence}); map only those ranks"
        )
    unmapped = sorted(set(range(launch.world_size)) - ranks)
    if unmapped:
        raise LaunchError(
            f"the role map gives launcher rank {unmapped[0]} no role ({launch.title} runs "
            f"{launch.world_size} ranks); map every rank to p or d"
        )
    for side in ("p", "d"):
        if launch.rank in role_map[side]:
            return role_name(side, role_map[side].index(launch.rank))
    raise AssertionError("unreachable: every rank is mapped")
