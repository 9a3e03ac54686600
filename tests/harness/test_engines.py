"""Launchers: what each engine's environment says, the role map, and how settings take them in."""

from __future__ import annotations

import pytest

from kvtest.roles.engines import LAUNCHER_PORT, LaunchError, assign_role, detect, first_host, parse_role_map
from kvtest.roles.topology import Topology
from kvtest.settings import resolve

TORCHRUN = {
    "RANK": "1",
    "WORLD_SIZE": "2",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "10.0.0.5",
    "MASTER_PORT": "29400",
    "TORCHELASTIC_RUN_ID": "abc",
    "TORCHELASTIC_USE_AGENT_STORE": "True",
}
LWS = {"LWS_LEADER_ADDRESS": "kv-0.kv.default", "LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "1"}
# Ascend Operator: RANK is the pod, WORLD_SIZE every NPU of the job, LOCAL_WORLD_SIZE each pod's
ASCEND_OPERATOR = {
    "MASTER_ADDR": "10.0.0.7",
    "MASTER_PORT": "2222",
    "WORLD_SIZE": "16",
    "LOCAL_WORLD_SIZE": "8",
    "RANK": "0",
    "LOCAL_RANK": "{0,1,2,3,4,5,6,7}",
}
OPEN_MPI = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}
MPICH = {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALNRANKS": "1", "MASTER_ADDR": "10.0.0.9"}
SLURM = {
    "SLURM_PROCID": "1",
    "SLURM_NTASKS": "2",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NODELIST": "npu[07-08]",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
}


def _resolve(env: dict[str, str], **cli: str):
    return resolve(cli, env, {})


@pytest.mark.parametrize(
    ("env", "engine", "rank", "world", "local", "host"),
    [
        (TORCHRUN, "torchrun", 1, 2, 2, "10.0.0.5"),
        (LWS, "lws", 1, 2, 1, "kv-0.kv.default"),
        (ASCEND_OPERATOR, "ascend-operator", 0, 2, 1, "10.0.0.7"),
        (OPEN_MPI, "mpi", 3, 4, 4, "127.0.0.1"),  # every rank on this host: no address needed
        (MPICH, "mpi", 1, 2, 1, "10.0.0.9"),
        (SLURM, "slurm", 1, 2, 1, "npu07"),
    ],
)
def test_each_engine_is_detected_with_its_rank_world_and_leader(env, engine, rank, world, local, host):
    launch = detect(env, "auto")
    assert launch is not None
    assert (launch.engine, launch.rank, launch.world_size, launch.local_size, launch.leader_host) == (
        engine, rank, world, local, host,
    )
    assert detect(env, engine) == launch
    assert detect(env, "none") is None


def test_torchrun_wins_over_what_it_runs_inside_and_a_batch_script_is_not_a_slurm_launch():
    assert detect({**SLURM, **TORCHRUN}, "auto").engine == "torchrun"  # torchrun inside srun
    batch = {k: v for k, v in SLURM.items() if not k.startswith("SLURM_STEP")}
    assert detect(batch, "auto") is None  # an sbatch script's SLURM_PROCID is not one process per rank
    assert detect(batch, "slurm").engine == "slurm"  # unless asked for
    assert detect({}, "auto") is None


def test_only_torchrun_with_the_agent_store_joins_the_agents_store():
    assert detect(TORCHRUN, "auto").agent_store is True
    assert detect({**TORCHRUN, "TORCHELASTIC_USE_AGENT_STORE": "False"}, "auto").agent_store is False
    assert detect(ASCEND_OPERATOR, "auto").agent_store is False


@pytest.mark.parametrize(
    ("env", "choice", "needle"),
    [
        ({}, "torchrun", "RANK is not in the environment"),
        ({}, "lws", "LWS_WORKER_INDEX is not in the environment"),
        ({}, "mpi", "neither OMPI_COMM_WORLD_RANK"),
        ({}, "slurm", "SLURM_PROCID is not in the environment"),
        ({**TORCHRUN, "RANK": "one"}, "auto", "RANK='one' in the environment is not a whole number"),
        ({**TORCHRUN, "RANK": "2"}, "auto", "gives rank 2 of a world of 2"),
        ({"OMPI_COMM_WORLD_RANK": "0"}, "auto", "not OMPI_COMM_WORLD_SIZE"),
    ],
)
def test_an_absent_or_broken_launcher_environment_is_named(env, choice, needle):
    with pytest.raises(LaunchError, match="^" + ".*" + __import__("re").escape(needle)):
        detect(env, choice)


def test_first_host_of_a_slurm_node_list():
    assert first_host("npu[07-09,12],gpu1") == "npu07"
    assert first_host("gpu1,gpu2") == "gpu1"
    assert first_host("host-a") == "host-a"


def test_role_map_parses_and_refuses_two_roles_for_one_rank():
    assert parse_role_map("p=0,1 d=2,3") == {"p": (0, 1), "d": (2, 3)}
    assert parse_role_map("d=0;p=1") == {"p": (1,), "d": (0,)}
    assert parse_role_map("p=0,1,d=2") == {"p": (0, 1), "d": (2,)}
    for bad, needle in [
        ("p=0 d=0", "launcher rank 0 is mapped to two roles"),
        ("p=0,0 d=1", "launcher rank 0 is mapped to two roles"),
        ("p=0", "both p and d need ranks"),
        ("p=0 x=1", "is not a role's entry"),
        ("p=a d=1", "not a rank"),
        ("p= d=1", "lists no ranks"),
    ]:
        with pytest.raises(ValueError, match=__import__("re").escape(needle)):
            parse_role_map(bad)


def test_ranks_map_in_topology_order_or_as_the_role_map_says():
    launch = detect({**TORCHRUN, "WORLD_SIZE": "4", "RANK": "2"}, "auto")
    assert assign_role(launch, Topology(2, 2), None) == "d0"
    assert assign_role(launch, Topology(2, 2), parse_role_map("p=2,3 d=0,1")) == "p0"
    with pytest.raises(LaunchError, match="names launcher rank 5, but torchrun runs ranks 0..3"):
        assign_role(launch, Topology(2, 2), parse_role_map("p=0,5 d=1,2"))
    with pytest.raises(LaunchError, match="gives launcher rank 3 no role"):
        assign_role(launch, Topology(2, 1), parse_role_map("p=0,1 d=2"))


def test_settings_take_role_rank_topology_and_the_agent_store_from_torchrun():
    s = _resolve(TORCHRUN)
    assert (s.role_name, str(s.topology), s.local_mode) == ("d0", "1p1d", False)
    assert s.rendezvous is not None and (s.rendezvous.host, s.rendezvous.port) == ("10.0.0.5", 29400)
    assert s.rendezvous.hosted_by == "agent" and not s.hosts_store
    assert "torchrun's agent store at 10.0.0.5:29400" == s.rendezvous.describe()
    assert s.sources["role"].startswith("torchrun (RANK=1")


def test_without_an_agent_store_the_launchers_rank0_hosts_on_kvtests_port_whatever_its_role():
    leader = _resolve({**LWS, "LWS_WORKER_INDEX": "0"}, role_map="p=1 d=0")
    other = _resolve(LWS, role_map="p=1 d=0")
    assert (leader.role_name, leader.hosts_store) == ("d0", True)
    assert (other.role_name, other.hosts_store) == ("p0", False)
    assert leader.rendezvous == other.rendezvous
    assert other.rendezvous is not None and other.rendezvous.port == LAUNCHER_PORT != 29500
    assert other.rendezvous.host == "kv-0.kv.default"


def test_ascend_operator_pods_are_the_ranks_and_the_store_is_on_the_port_its_service_forwards():
    s = _resolve(ASCEND_OPERATOR)
    assert (s.role_name, str(s.topology), s.hosts_store) == ("p0", "1p1d", True)
    assert s.rendezvous is not None and (s.rendezvous.host, s.rendezvous.port) == ("10.0.0.7", 2222)
    worker = _resolve({**ASCEND_OPERATOR, "RANK": "1", "MASTER_ADDR": "10.96.0.12"})  # the Service's IP
    assert (worker.role_name, worker.hosts_store, worker.rendezvous.port) == ("d0", False, 2222)
    plain_torch = {**TORCHRUN, "TORCHELASTIC_USE_AGENT_STORE": "False"}
    assert _resolve(plain_torch).rendezvous.port == LAUNCHER_PORT  # MASTER_PORT is the workers' own


def test_explicit_role_and_rendezvous_win_over_the_launcher():
    s = _resolve(TORCHRUN, role="p", rendezvous="tcp://127.0.0.1:1234")
    assert (s.role_name, s.launch, s.hosts_store) == ("p0", None, True)
    s = _resolve(TORCHRUN, rendezvous="tcp://10.1.1.1:4000")  # the launcher's role, the user's store
    assert (s.role_name, s.rendezvous.port, s.hosts_store) == ("d0", 4000, False)
    s = _resolve({**LWS, "LWS_WORKER_INDEX": "0"}, rendezvous="tcp://10.1.1.1:4000", role_map="p=1 d=0")
    assert (s.role_name, s.hosts_store) == ("d0", True)  # the address is rank 0's, whatever its role
    assert _resolve(TORCHRUN, launcher="none").local_mode


def test_a_launch_of_one_process_is_a_local_run():
    assert _resolve({**TORCHRUN, "RANK": "0", "WORLD_SIZE": "1"}).local_mode


@pytest.mark.parametrize(
    ("env", "cli", "needle"),
    [
        ({**TORCHRUN, "WORLD_SIZE": "4"}, {}, "torchrun runs 4 processes .* and no --topology says"),
        ({**TORCHRUN, "WORLD_SIZE": "3"}, {"topology": "2p2d"}, "runs 3 processes .* topology 2p2d .* has 4 roles"),
        (TORCHRUN, {"role_map": "p=0 d=0"}, "launcher rank 0 is mapped to two roles"),
        (TORCHRUN, {"role_map": "p=0 d=2"}, "names launcher rank 2, but torchrun runs ranks 0..1"),
        (TORCHRUN, {"role_map": "p=0,1 d=2", "topology": "1p1d"}, "maps 2p1d but topology 1p1d"),
        ({}, {"role_map": "p=0 d=1"}, "--kv-role-map .* needs a launcher"),
        (TORCHRUN, {"role": "p", "role_map": "p=0 d=1", "rendezvous": "tcp://127.0.0.1:1"}, "drop one of them"),
        ({}, {"launcher": "lws"}, "LWS_WORKER_INDEX is not in the environment.*--kv-launcher lws from the command"),
        ({"PMI_RANK": "0", "PMI_SIZE": "2"}, {}, "MPI names no leader host .* MASTER_ADDR"),
        ({}, {"launcher": "k8s"}, "'k8s' from the command line .*: the launcher must be one of"),
    ],
)
def test_each_mismatch_is_a_one_line_usage_error(env, cli, needle):
    with pytest.raises(pytest.UsageError) as info:
        _resolve(env, **cli)
    text = str(info.value)
    assert "\n" not in text and text.startswith("kvtest: ")
    assert __import__("re").search(needle, text), text


def test_a_launchers_rank0_hosts_on_every_address_when_the_leader_address_is_not_its_own(port):
    """Ascend Operator gives the Master pod its Service's ClusterIP as MASTER_ADDR: no interface has it."""
    from datetime import timedelta

    import torch.distributed as dist

    from kvtest.run.rendezvous import PortInUse, open_store
    from kvtest.settings import Rendezvous

    elsewhere = "192.0.2.77"  # TEST-NET-1: never an address of this host
    with pytest.raises(PortInUse, match=f"cannot listen on {elsewhere}:{port}"):
        open_store(Rendezvous("tcp", host=elsewhere, port=port), host=True, timeout=2)  # p0 by hand: exact
    store, bound = open_store(Rendezvous("tcp", host=elsewhere, port=port, hosted_by="rank0"), host=True, timeout=2)
    store.set("k", "v")
    client = dist.TCPStore("127.0.0.1", bound, is_master=False, timeout=timedelta(seconds=5))
    assert (bound, client.get("k")) == (port, b"v")
