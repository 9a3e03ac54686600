"""The launchers end to end (issue 16, "What must show"): the same command on every node, the rank
from the launcher, on the sim backend.

- torchrun across two "nodes" (network namespaces), c10d rendezvous at the first one's address;
- MPI: MPICH's mpiexec (the ``mpich`` wheel of the dev extras) and Open MPI's environment, simulated;
- Kubernetes LeaderWorkerSet and the Ascend Operator: each pod a process in a namespace of its own,
  started with the command and the environment that pod gets: taken from examples/k8s/*.yaml plus
  what the operator injects (see podsim.py). So a test here fails when the examples drift from what
  works. The only substitutions: the sim backend for npu, this checkout for the image's, local folders
  for the volumes, a narrower test selection (PYTEST_ADDOPTS).
- every launcher mismatch is one usage line on every rank, exit code 4, no hang.
(Single-node torchrun, 1p1d and 2p2d: tests/harness/test_torchrun.py.)
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from podsim import (
    ROOT,
    Network,
    Pod,
    base_env,
    load_manifest,
    netns_unavailable,
    pods_of_ascendjob,
    pods_of_lws,
    spawn,
)

from kvtest.node import free_port
from kvtest.settings import OPTIONS

EXAMPLES = ROOT / "examples" / "k8s"
# one quick 1p1d sample test: push_blocks (one-sided link, push), fp32
SELECTION = ["tests/samples/test_push_blocks.py", "-k", "fp32"]
TOKEN = "5e" * 32
SECRETS = {("kvtest-token", "token"): TOKEN}
RUN_S = 150  # one run's deadline: a hang fails the test, never blocks it

_NETNS = netns_unavailable()
needs_netns = pytest.mark.skipif(_NETNS is not None, reason=_NETNS or "")


def addopts(tmp: Path, name: str, selection: list[str] = SELECTION) -> str:
    return shlex.join(["-p", "no:cacheprovider", f"--basetemp={tmp / name / 'pytest'}", "--kv-logs", str(tmp / name / "logs"), *selection])


def finish(procs: Mapping[str, subprocess.Popen[bytes]], logs: Mapping[str, Path], timeout: float = RUN_S) -> dict[str, tuple[int, str]]:
    """Wait for every process (one deadline for all); kill the rest at the deadline and fail."""
    end = time.monotonic() + timeout
    hung = []
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            hung.append(name)
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, 9)  # each run is a session of its own: the shell and what it started
            proc.wait()
    out = {name: (proc.returncode, logs[name].read_text(errors="replace")) for name, proc in procs.items()}
    if hung:
        pytest.fail(f"{hung} did not end within {timeout:g}s (a hang):\n" + "\n".join(f"--- {n}\n{o}" for n, (_, o) in out.items()))
    return out


def show(out: Mapping[str, tuple[int, str]]) -> str:
    return "\n".join(f"--- {name} (exit {rc})\n{text[-6000:]}" for name, (rc, text) in out.items())


@pytest.fixture
def network2() -> Iterator[Network]:
    with Network(2) as net:
        yield net


# ---------------------------------------------------------------- the examples themselves


def only(docs: list[dict]) -> dict:
    assert len(docs) == 1
    return docs[0]


def test_example_manifests_run_one_command_on_every_pod():
    lws = only(load_manifest(EXAMPLES / "leaderworkerset.yaml"))
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1" and lws["kind"] == "LeaderWorkerSet"
    lwt = lws["spec"]["leaderWorkerTemplate"]
    leader, worker = (lwt[t]["spec"]["containers"][0] for t in ("leaderTemplate", "workerTemplate"))
    assert lwt["size"] == 2
    assert (leader["command"], leader["args"]) == (worker["command"], worker["args"])
    for container in (leader, worker):
        assert container["resources"]["requests"] == {"huawei.com/ascend-1980": "1"}
    mounts = {m["mountPath"] for m in leader["volumeMounts"]}
    assert {"/etc/hccn.conf", "/usr/local/Ascend/driver", "/kvtest-artifacts"} <= mounts

    job = only(load_manifest(EXAMPLES / "ascendjob.yaml"))
    assert job["apiVersion"] == "mindxdl.gitee.com/v1" and job["kind"] == "AscendJob"
    assert job["spec"]["schedulerName"] == "volcano"
    master, worker = (
        next(c for c in job["spec"]["replicaSpecs"][r]["template"]["spec"]["containers"] if c["name"] == "ascend")
        for r in ("Master", "Worker")
    )
    assert (master["command"], master["args"]) == (worker["command"], worker["args"])
    # one NPU per pod, or the operator's WORLD_SIZE (NPUs x pods) is not the number of roles
    assert [sum(int(v) for v in c["resources"]["requests"].values()) for c in (master, worker)] == [1, 1]
    assert {"name": "ascendjob-port", "containerPort": 2222} in master["ports"]  # MASTER_PORT, kvtest's store


@pytest.mark.full
def test_nightly_workflow_uses_options_that_exist():
    # the workflow cannot run here (no Ascend runner): check that every kvtest flag it passes exists
    workflow = load_manifest(ROOT / "examples" / "ci" / "ascend-nightly.yml")[0]
    steps = workflow["jobs"]["nightly"]["steps"]
    script = "\n".join(step.get("run", "") for step in steps)
    for needed in ("npu-smi info", "kvtest doctor", "--kv-results", "--kv-artifacts", "kvtest compare",
                   "kvtest report"):
        assert needed in script, needed
    assert any(step.get("uses", "").startswith("actions/upload-artifact@") for step in steps)
    known = {o.flag for o in OPTIONS}
    helps = {
        sub: subprocess.run([sys.executable, "-m", "kvtest.cli", sub, "--help"], capture_output=True, text=True, timeout=60).stdout
        for sub in ("doctor", "compare", "report")
    }  # fmt: skip
    for line in script.replace("\\\n", " ").splitlines():
        flags = re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", line)
        if "pytest" in line:
            unknown = [f for f in flags if f.startswith(("--kv-", "--backend", "--device-id")) and f not in known]
            assert not unknown, f"{unknown} in {line!r}"
        for sub, text in helps.items():
            if f"kvtest {sub}" in line:
                assert text, f"kvtest {sub} --help printed nothing"
                missing = [f for f in flags if f not in text]
                assert not missing, f"kvtest {sub} has no {missing}: {line!r}"


# ---------------------------------------------------------------- Kubernetes, simulated pod by pod


def run_pods(pods: list[Pod], tmp: Path, extra: Mapping[str, str] | None = None) -> dict[str, tuple[int, str]]:
    procs, logs = {}, {}
    for pod in pods:
        assert pod.env.get("KVTEST_BACKEND") == "npu", f"{pod.name}: the example should pin --backend npu"
        logs[pod.name] = tmp / f"{pod.name}.out"
        env = {"KVTEST_BACKEND": "sim", "PYTEST_ADDOPTS": addopts(tmp, pod.name), **(extra or {})}
        procs[pod.name] = spawn(pod, logs[pod.name], env)
    return finish(procs, logs)


def artifacts_of(tmp: Path) -> list[str]:
    folder = tmp / "pvc" / "kvtest-artifacts"
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def lws_pods(network: Network, tmp_path: Path) -> list[Pod]:
    """The example LeaderWorkerSet's pods, one per namespace, the leader's DNS name resolving to node 0."""
    pods = pods_of_lws(only(load_manifest(EXAMPLES / "leaderworkerset.yaml")), network.hosts, SECRETS, tmp_path)
    network.names({pods[0].env["LWS_LEADER_ADDRESS"]: network.hosts[0].ip})
    return pods


@needs_netns
def test_leaderworkerset_pods_run_the_example(network2: Network, tmp_path: Path):
    pods = lws_pods(network2, tmp_path)
    out = run_pods(pods, tmp_path)
    (leader_rc, leader), (worker_rc, worker) = out["kvtest-0"], out["kvtest-0-1"]
    assert leader_rc == 0 and worker_rc == 0, show(out)
    assert "kvtest exit code: 0 (LWS_WORKER_INDEX=0)" in leader, leader
    assert "1 passed" in leader and "1 passed" in worker, show(out)
    assert "kvtest: LeaderWorkerSet: rank 0 of 2 -> p0 (topology 1p1d)" in leader
    assert "kvtest: LeaderWorkerSet: rank 1 of 2 -> d0" in worker, show(out)
    files = artifacts_of(tmp_path)
    assert "results.json" in files, files
    assert any(f.endswith("p0/junit.xml") for f in files) and any(f.endswith("d0/junit.xml") for f in files), files


@needs_netns
@pytest.mark.full
def test_leaderworkerset_leader_exit_code_is_the_result(network2: Network, tmp_path: Path):
    # a flipped byte in d0's push: the leader's exit code (what the example prints and exits with) says so
    pods = lws_pods(network2, tmp_path)
    out = run_pods(pods, tmp_path, {"KVTEST_SIM_FAULT": "flip@push_blocks:d0"})
    leader_rc, leader = out["kvtest-0"]
    assert leader_rc == 1 and "kvtest exit code: 1 (LWS_WORKER_INDEX=0)" in leader, show(out)
    assert "1 failed" in leader, show(out)


@needs_netns
@pytest.mark.full
def test_ascendjob_pods_run_the_example(network2: Network, tmp_path: Path):
    job = only(load_manifest(EXAMPLES / "ascendjob.yaml"))
    cluster_ip = "10.214.0.200"
    pods, ports = pods_of_ascendjob(job, network2.hosts, SECRETS, tmp_path, cluster_ip)
    assert [p.env["RANK"] for p in pods] == ["0", "1"] and {p.env["WORLD_SIZE"] for p in pods} == {"2"}
    network2.service(cluster_ip, ports, target=network2.hosts[0])
    out = run_pods(pods, tmp_path)
    (master_rc, master), (worker_rc, worker) = out["kvtest-master-0"], out["kvtest-worker-0"]
    assert master_rc == 0 and worker_rc == 0, show(out)
    assert "kvtest exit code: 0 (RANK=0)" in master, master
    assert "1 passed" in master and "1 passed" in worker, show(out)
    assert "kvtest: Ascend Operator: rank 0 of 2 -> p0 (topology 1p1d)" in master
    assert "kvtest: Ascend Operator: rank 1 of 2 -> d0" in worker, show(out)
    files = artifacts_of(tmp_path)
    assert any(f.endswith("p0/junit.xml") for f in files) and any(f.endswith("d0/junit.xml") for f in files), files


# ---------------------------------------------------------------- torchrun across two nodes


@needs_netns
@pytest.mark.full
def test_torchrun_two_nodes(network2: Network, tmp_path: Path):
    network2.names()
    endpoint = f"{network2.hosts[0].ip}:29400"  # torchrun's c10d rendezvous port, not kvtest's
    procs, logs = {}, {}
    for k, host in enumerate(network2.hosts):
        name = f"node{k}"
        argv = host.argv([
            sys.executable, "-m", "torch.distributed.run",
            "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
            "--rdzv-id", "kvtest-e2e", "--max-restarts", "0", "-m", "pytest",
        ])  # fmt: skip
        env = {**base_env(tmp_path), "KVTEST_TOKEN": TOKEN, "PYTEST_ADDOPTS": addopts(tmp_path, name)}
        logs[name] = tmp_path / f"{name}.out"
        with logs[name].open("wb") as fh:
            procs[name] = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    out = finish(procs, logs)
    assert all(rc == 0 for rc, _ in out.values()), show(out)
    texts = [text for _, text in out.values()]
    assert sum("kvtest: torchrun: rank 0 of 2 -> p0" in t for t in texts) == 1, show(out)
    assert sum("kvtest: torchrun: rank 1 of 2 -> d0" in t for t in texts) == 1, show(out)
    assert all("1 passed" in t for t in texts), show(out)


# ---------------------------------------------------------------- MPI


def mpi_env(rank: int, size: int) -> dict[str, str]:
    """What Open MPI's mpirun gives each process of ``mpirun -n SIZE`` on one host."""
    return {
        "OMPI_COMM_WORLD_RANK": str(rank),
        "OMPI_COMM_WORLD_SIZE": str(size),
        "OMPI_COMM_WORLD_LOCAL_RANK": str(rank),
        "OMPI_COMM_WORLD_LOCAL_SIZE": str(size),
        "OMPI_COMM_WORLD_NODE_RANK": "0",
        "PMIX_RANK": str(rank),
    }


def start_ranks(tmp: Path, size: int, args: list[str], env_of=mpi_env) -> dict[str, tuple[int, str]]:
    procs, logs = {}, {}
    for rank in range(size):
        name = f"rank{rank}"
        env = {**base_env(tmp), "KVTEST_TOKEN": TOKEN, **env_of(rank, size)}
        logs[name] = tmp / f"{name}.out"
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={tmp / name / 'pytest'}", "--kv-logs", str(tmp / name / "logs"), *args]
        with logs[name].open("wb") as fh:
            procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    return finish(procs, logs, timeout=90)


def test_open_mpi_environment(tmp_path: Path):
    out = start_ranks(tmp_path, 2, SELECTION)
    assert [rc for rc, _ in out.values()] == [0, 0], show(out)
    assert "kvtest: MPI: rank 0 of 2 -> p0" in out["rank0"][1] and "kvtest: MPI: rank 1 of 2 -> d0" in out["rank1"][1], show(out)


def find_mpiexec() -> str | None:
    return shutil.which("mpiexec", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))


needs_mpiexec = pytest.mark.skipif(find_mpiexec() is None, reason="no mpiexec: pip install mpich (in the dev extras)")


def mpiexec_pytest(tmp_path: Path, ranks: int, args: list[str]) -> tuple[int, str]:
    mpiexec = find_mpiexec()
    assert mpiexec
    log = tmp_path / "mpiexec.out"
    env = {**base_env(tmp_path), "KVTEST_TOKEN": TOKEN}
    cmd = [mpiexec, "-n", str(ranks), "-l", sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'pt'}", *args]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    return finish({"mpiexec": proc}, {"mpiexec": log})["mpiexec"]


@needs_mpiexec
@pytest.mark.full
def test_mpich_mpiexec(tmp_path: Path):
    rc, text = mpiexec_pytest(tmp_path, 2, SELECTION)
    assert rc == 0, text
    assert "kvtest: MPI: rank 0 of 2 -> p0" in text and "kvtest: MPI: rank 1 of 2 -> d0" in text, text


@needs_mpiexec
@pytest.mark.full
def test_mpich_mpiexec_world_size_mismatch_stops_every_rank(tmp_path: Path):
    rc, text = mpiexec_pytest(tmp_path, 3, ["--topology", "1p1d", *SELECTION])
    errors = [line for line in text.splitlines() if "ERROR: kvtest: MPI runs 3 processes" in line]
    assert rc == 4 and sorted(line.split("]", 1)[0] for line in errors) == ["[0", "[1", "[2"], text
    assert "Traceback" not in text, text


def slurm_env(rank: int, size: int) -> dict[str, str]:
    """What ``srun -n SIZE`` gives each task on one node."""
    node = socket.gethostname()
    return {
        "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
        "SLURM_NTASKS": str(size), "SLURM_STEP_NUM_TASKS": str(size), "SLURM_NNODES": "1",
        "SLURM_STEP_NODELIST": node, "SLURM_JOB_NODELIST": node, "SLURM_STEP_TASKS_PER_NODE": str(size),
    }  # fmt: skip


@pytest.mark.full
def test_slurm_environment(tmp_path: Path):
    out = start_ranks(tmp_path, 2, SELECTION, env_of=slurm_env)
    assert [rc for rc, _ in out.values()] == [0, 0], show(out)
    assert "kvtest: Slurm: rank 0 of 2 -> p0" in out["rank0"][1] and "kvtest: Slurm: rank 1 of 2 -> d0" in out["rank1"][1], show(out)


# ---------------------------------------------------------------- mismatches: one line on every rank, exit 4


MISMATCHES = {
    # (ranks, options, what the one line must name)
    "world size 3 against topology 1p1d": (3, ["--topology", "1p1d"], ["runs 3 processes", "1p1d"]),
    # roles are positional (p0.., d0..), so two ranks on one role means one rank listed twice
    "one rank mapped to two roles": (2, ["--kv-role-map", "p=0 d=0"], ["rank 0 is mapped to two roles"]),
    "role map naming a missing rank": (2, ["--kv-role-map", "p=0 d=5"], ["rank 5", "0..1"]),
}


@pytest.mark.parametrize(
    "case", [case if i == 0 else pytest.param(case, marks=pytest.mark.full) for i, case in enumerate(MISMATCHES)]
)
def test_launcher_mismatch_is_a_usage_error_on_every_rank(case: str, tmp_path: Path):
    size, args, named = MISMATCHES[case]
    out = start_ranks(tmp_path, size, [*args, *SELECTION])
    for name, (rc, text) in out.items():
        errors = [line for line in text.splitlines() if line.startswith("ERROR:")]
        assert rc == 4 and len(errors) == 1, f"{name}: {case}:\n{text}"
        assert all(word in errors[0] for word in named), f"{name}: {errors[0]}"
        assert "Traceback" not in text, text


@pytest.mark.full
def test_ascend_operator_pods_with_8_npus_each_are_one_process_each(tmp_path: Path):
    # the operator's WORLD_SIZE counts NPUs (8 per pod x 2 pods) and LOCAL_RANK lists them: kvtest runs
    # one process per pod, ranks 0 and 1 of 2, and does not trip over LOCAL_RANK="0,1,...,7"
    port = free_port("127.0.0.1")

    def operator_env(rank: int, size: int) -> dict[str, str]:
        return {
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "16",
            "LOCAL_WORLD_SIZE": "8", "LOCAL_RANK": "0,1,2,3,4,5,6,7",
        }  # fmt: skip

    out = start_ranks(tmp_path, 2, SELECTION, env_of=operator_env)
    assert [rc for rc, _ in out.values()] == [0, 0], show(out)
    assert "kvtest: Ascend Operator: rank 0 of 2 -> p0" in out["rank0"][1], show(out)
    assert "kvtest: Ascend Operator: rank 1 of 2 -> d0" in out["rank1"][1], show(out)
