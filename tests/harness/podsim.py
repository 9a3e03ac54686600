"""Pods and nodes on one machine, for the launcher end-to-end tests.

- ``load_manifest``: the examples' YAML documents (PyYAML).
- ``Network``: hosts as network namespaces on one bridge (10.214.0.0/24, never the host's own NICs),
  per-namespace ``/etc/hosts`` (as ``ip netns exec`` mounts ``/etc/netns/<ns>/hosts``) for the pods'
  DNS names, and Services: a ClusterIP on the bridge's namespace forwarded to a pod, as kube-proxy
  (userspace mode) does. The pod owning the Service cannot listen on its ClusterIP, as on a cluster.
- ``pods_of_lws`` / ``pods_of_ascendjob``: each pod's argv, working directory and environment, taken
  from the manifest plus what the operator injects (kubernetes-sigs/lws pkg/utils/pod/pod_utils.go
  AddLWSVariables; Ascend/mind-cluster component/ascend-operator/pkg/controllers/v1/env.go setPytorchEnv).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SUBNET = "10.214.0"  # test-only addresses, on veths this module creates


# ---------------------------------------------------------------- manifests


def load_manifest(path: Path) -> list[dict[str, Any]]:
    """Every document of a manifest file."""
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# ---------------------------------------------------------------- hosts: network namespaces on a bridge


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def netns_unavailable() -> str | None:
    """Why this machine cannot make network namespaces, or None."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2 to make network namespaces"
    probe = f"kvt-probe{os.getpid() % 100000}"
    try:
        sh("ip", "netns", "add", probe)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace here: {exc}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


@dataclass
class Host:
    ns: str
    ip: str

    @property
    def hostname(self) -> str:
        return f"kvt-node{self.ip.rsplit('.', 1)[1]}"

    def argv(self, command: list[str]) -> list[str]:
        """``command`` on this host: in its network namespace, under its own hostname (a UTS namespace)."""
        return ["ip", "netns", "exec", self.ns, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname, *command]


@dataclass
class Network:
    """``count`` hosts (10.214.0.1..) on one bridge that lives in a namespace of its own (the switch)."""

    count: int
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    hosts: list[Host] = field(default_factory=list)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"kvt-sw{self.tag}"

    def __enter__(self) -> Network:
        try:
            sh("ip", "netns", "add", self.switch)
            sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.switch, "link", "set", "br0", "up")
            sh("ip", "-n", self.switch, "link", "set", "lo", "up")
            for k in range(1, self.count + 1):
                ns, ip = f"kvt-h{k}-{self.tag}", f"{SUBNET}.{k}"
                here, there = f"kvh{k}{self.tag}", f"kvs{k}{self.tag}"
                sh("ip", "netns", "add", ns)
                sh("ip", "link", "add", here, "type", "veth", "peer", "name", there)
                sh("ip", "link", "set", here, "netns", ns)
                sh("ip", "link", "set", there, "netns", self.switch)
                sh("ip", "-n", self.switch, "link", "set", there, "master", "br0")
                sh("ip", "-n", self.switch, "link", "set", there, "up")
                sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", here)
                sh("ip", "-n", ns, "link", "set", here, "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                self.hosts.append(Host(ns, ip))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for ns in [h.ns for h in self.hosts] + [self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)

    def names(self, entries: Mapping[str, str] | None = None) -> None:
        """What every host resolves (``ip netns exec`` mounts /etc/netns/<ns>/hosts on /etc/hosts): each
        host's hostname, as on a cluster (torchrun's c10d rendezvous picks its store host by comparing
        the endpoint with the hostname's addresses; its MASTER_ADDR is that hostname), and ``entries``."""
        text = "127.0.0.1 localhost\n" + "".join(f"{h.ip} {h.hostname}\n" for h in self.hosts)
        text += "".join(f"{ip} {name}\n" for name, ip in (entries or {}).items())
        for host in self.hosts:
            folder = Path("/etc/netns") / host.ns
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text(text)

    def service(self, cluster_ip: str, ports: list[int], target: Host) -> None:
        """A ClusterIP (on the switch) that forwards ``ports`` to ``target``, as kube-proxy does."""
        sh("ip", "-n", self.switch, "addr", "add", f"{cluster_ip}/24", "dev", "br0")
        for port in ports:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.switch, sys.executable, __file__, "forward", cluster_ip, str(port), target.ip],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            self._procs.append(proc)
            assert proc.stdout is not None
            ready = proc.stdout.readline()  # the forwarder says so once it listens (EOF if it died)
            assert ready == b"listening\n", f"the ClusterIP forwarder for {cluster_ip}:{port} failed: {ready!r}"


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _forward(host: str, port: int, target: str) -> None:
    server = socket.create_server((host, port))
    print("listening", flush=True)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection((target, port), timeout=5)
        except OSError:
            client.close()  # as a Service without a ready endpoint: the connection is refused
            continue
        upstream.settimeout(None)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


# ---------------------------------------------------------------- pods


@dataclass
class Pod:
    name: str
    host: Host | None
    argv: list[str]
    cwd: Path
    env: dict[str, str]


def base_env(tmp: Path) -> dict[str, str]:
    """The image's environment: this interpreter's bin first, this checkout importable, UCX over TCP."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp),
        "PYTHONPATH": str(ROOT),
        "UCX_TLS": "tcp",  # the KV bytes cross the veths, as between two machines
        "LANG": "C.UTF-8",
    }


def container_argv(container: Mapping[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def container_env(container: Mapping[str, Any], secrets: Mapping[tuple[str, str], str], pod_ip: str) -> dict[str, str]:
    """The container's ``env`` list, with Secret and downward-API references resolved."""
    out: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            out[entry["name"]] = str(entry["value"])
            continue
        source = entry.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            out[entry["name"]] = secrets[(ref["name"], ref["key"])]
        elif source.get("fieldRef", {}).get("fieldPath") == "status.podIP":
            out[entry["name"]] = pod_ip
        else:
            raise ValueError(f"env {entry['name']}: a reference this simulation does not know: {source}")
    return out


def mount_map(pod_spec: Mapping[str, Any], container: Mapping[str, Any], pod_dir: Path, shared: Path) -> dict[str, str]:
    """Each mountPath -> a folder here: a PVC is ``shared`` (one per claim), anything else the pod's own."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    out: dict[str, str] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "persistentVolumeClaim" in volume:
            local = shared / volume["persistentVolumeClaim"]["claimName"]
        else:
            local = pod_dir / "volumes" / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        out[mount["mountPath"]] = str(local)
    return out


def relocate(text: str, mounts: Mapping[str, str]) -> str:
    for path in sorted(mounts, key=len, reverse=True):
        text = re.sub(re.escape(path) + r"(?=/|\s|\"|'|$)", mounts[path], text)
    return text


def make_pod(
    name: str,
    host: Host | None,
    pod_spec: Mapping[str, Any],
    injected: Mapping[str, str],
    secrets: Mapping[tuple[str, str], str],
    tmp: Path,
    container_name: str | None = None,
) -> Pod:
    containers = pod_spec["containers"]
    container = next(c for c in containers if container_name in (None, c["name"]))
    pod_dir = tmp / name
    pod_dir.mkdir(parents=True, exist_ok=True)
    mounts = mount_map(pod_spec, container, pod_dir, tmp / "pvc")
    pod_ip = host.ip if host else "127.0.0.1"
    env = {**base_env(pod_dir), **container_env(container, secrets, pod_ip), **injected}
    env = {k: relocate(v, mounts) for k, v in env.items()}
    argv = [relocate(a, mounts) for a in container_argv(container)]
    workdir = container.get("workingDir")
    assert workdir == "/opt/kvtest", f"{name}: workingDir {workdir!r}: the image's kvtest checkout is /opt/kvtest"
    return Pod(name, host, argv, ROOT, env)


def pods_of_lws(
    doc: Mapping[str, Any], hosts: list[Host], secrets: Mapping[tuple[str, str], str], tmp: Path
) -> list[Pod]:
    """Group 0 of a LeaderWorkerSet: the leader ``<name>-0`` and workers ``<name>-0-<i>``, one per host."""
    name = doc["metadata"]["name"]
    namespace = doc["metadata"].get("namespace", "default")
    lwt = doc["spec"]["leaderWorkerTemplate"]
    size = int(lwt["size"])
    assert len(hosts) >= size, f"{size} pods need {size} hosts"
    leader_address = f"{name}-0.{name}.{namespace}"  # <lws>-<group>.<subdomain (Shared: the lws name)>.<namespace>
    pods = []
    for index in range(size):
        template = lwt.get("leaderTemplate") if index == 0 else None
        template = template or lwt["workerTemplate"]
        injected = {"LWS_LEADER_ADDRESS": leader_address, "LWS_GROUP_SIZE": str(size), "LWS_WORKER_INDEX": str(index)}
        pod_name = f"{name}-0" if index == 0 else f"{name}-0-{index}"
        pods.append(make_pod(pod_name, hosts[index], template["spec"], injected, secrets, tmp))
    return pods


def npus_per_pod(container: Mapping[str, Any]) -> int:
    requests = container.get("resources", {}).get("requests", {})
    return sum(int(v) for k, v in requests.items() if k.startswith("huawei.com/"))


def pods_of_ascendjob(
    doc: Mapping[str, Any],
    hosts: list[Host],
    secrets: Mapping[tuple[str, str], str],
    tmp: Path,
    cluster_ip: str,
) -> tuple[list[Pod], list[int]]:
    """Master-0, Worker-0.. of a framework=pytorch AscendJob, and the ports of the Master's Service.

    The operator's variables (env.go setPytorchEnv): MASTER_ADDR is the Master Service's ClusterIP,
    MASTER_PORT its port named ascendjob-port, RANK the Master 0 and Worker i i+1 (the Master requests
    NPUs too: pod.go createPodSpec), WORLD_SIZE NPUs per pod x NPU pods, LOCAL_RANK "0,..,n-1".
    """
    name = doc["metadata"]["name"]
    assert doc["metadata"]["labels"]["framework"] == "pytorch"
    specs = doc["spec"]["replicaSpecs"]
    master = specs["Master"]["template"]["spec"]
    ascend = next(c for c in master["containers"] if c["name"] == "ascend")
    ports = {p["name"]: int(p["containerPort"]) for p in ascend.get("ports", [])}
    npus = npus_per_pod(ascend)
    replicas = [("master", i, specs["Master"]) for i in range(int(specs["Master"].get("replicas", 1)))]
    replicas += [("worker", i, specs["Worker"]) for i in range(int(specs["Worker"].get("replicas", 1)))]
    world = npus * len(replicas)
    pods = []
    for rank, (kind, index, spec) in enumerate(replicas):
        injected = {
            "LOCAL_WORLD_SIZE": str(npus),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": ",".join(str(i) for i in range(npus)),
            "MASTER_ADDR": cluster_ip,
            "MASTER_PORT": str(ports.get("ascendjob-port", 2222)),
            "RANK": str(rank),
            "MINDX_TASK_ID": "kvtest-sim-uid",
            "HostNetwork": "false",
        }
        pods.append(make_pod(f"{name}-{kind}-{index}", hosts[rank], spec["template"]["spec"], injected, secrets, tmp, "ascend"))
    return pods, sorted(ports.values())


def spawn(pod: Pod, log: Path, extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    argv = pod.argv if pod.host is None else pod.host.argv(pod.argv)
    fh = log.open("wb")
    try:
        return subprocess.Popen(
            argv, cwd=pod.cwd, env={**pod.env, **(extra_env or {})}, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        fh.close()


if __name__ == "__main__":
    if sys.argv[1] == "forward":
        _forward(sys.argv[2], int(sys.argv[3]), sys.argv[4])
