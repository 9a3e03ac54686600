from __future__ import annotations

import datetime
import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import sim_scenarios  # noqa: E402
from sim_scenarios import PeerFailed  # noqa: E402

from kvtest.backends import sim  # noqa: E402
from kvtest.backends.sim import datadist  # noqa: E402
from kvtest.node import free_port  # noqa: E402

START_S = 60.0
RESULT_S = 45.0


class Peer:
    """A ``sim_peer.py`` process that runs the ``d0`` role of scenarios while this process runs ``p0``."""

    def __init__(self, tmp: Path, env: dict[str, str], once: bool = False) -> None:
        self.store = dist.TCPStore(
            "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=30)
        )
        self.root = f"peer-{uuid.uuid4().hex[:8]}"
        self.env = env
        self.log = tmp / f"{self.root}.log"
        self._log = self.log.open("wb")
        args = [
            sys.executable,
            str(HERE / "sim_peer.py"),
            "--port",
            str(self.store.port),
            "--root",
            self.root,
        ]
        self.proc = subprocess.Popen(
            args + (["--once"] if once else []),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
        self._n = itertools.count()
        deadline = time.monotonic() + START_S
        while not self.store.check([f"{self.root}/ready"]):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"sim peer did not start (rc={self.proc.returncode}):\n{self.output()}")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")

    def run(
        self,
        scenario: str,
        params: dict[str, Any] | None = None,
        peer_env: dict[str, str] | None = None,
        local_env: dict[str, str] | None = None,
    ) -> None:
        """Run ``scenario``: ``d0`` in the peer, ``p0`` here; raise the first failure of either."""
        n = next(self._n)
        ns = f"{self.root}/run{n}"
        params = params or {}
        cmd = {"scenario": scenario, "role": "d0", "namespace": ns, "params": params, "env": peer_env or {}}
        self.store.set(f"{self.root}/cmd/{n}", json.dumps(cmd))
        saved = {k: os.environ.get(k) for k in {**self.env, **(local_env or {})}}
        os.environ.update({**self.env, **(local_env or {})})
        local_error: BaseException | None = None
        try:
            sim_scenarios.run_role(self.store, scenario, "p0", ns, params, self.alive)
        except BaseException as exc:  # noqa: BLE001 - reported after the peer's answer
            local_error = exc
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        result = self._result(n)
        if local_error is not None and not isinstance(local_error, PeerFailed):
            raise local_error
        if result is not None and not result["ok"]:
            raise PeerFailed(f"peer d0 failed in {scenario}:\n{result['error']}")
        if local_error is not None:
            raise local_error
        if result is None:
            raise PeerFailed(
                f"peer d0 gave no result for {scenario} (rc={self.proc.poll()}):\n{self.output()[-3000:]}"
            )

    def _result(self, n: int) -> dict[str, Any] | None:
        key = f"{self.root}/result/{n}"
        deadline = time.monotonic() + RESULT_S
        while not self.store.check([key]):
            if not self.alive() or time.monotonic() > deadline:
                return None
            time.sleep(0.01)
        return dict(json.loads(self.store.get(key)))

    def wait_exit(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def close(self) -> None:
        if self.alive():
            self.store.set(f"{self.root}/cmd/{next(self._n)}", json.dumps({"exit": True}))
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


# The sample suite runs every flow over shared memory (one host); these pairs add UCX over TCP.
TRANSPORTS = {"tcp": {"UCX_TLS": "tcp"}}


@pytest.fixture(scope="module", params=list(TRANSPORTS), ids=list(TRANSPORTS))
def peer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """One peer process per transport for a module's two-process tests."""
    p = Peer(tmp_path_factory.mktemp("sim-peer"), TRANSPORTS[request.param])
    yield p
    p.close()


@pytest.fixture
def ports() -> dict[str, int]:
    return {"p_port": free_port("127.0.0.1"), "d_port": free_port("127.0.0.1")}


@pytest.fixture
def store() -> dist.Store:
    return dist.HashStore()


@pytest.fixture
def configured(store: dist.Store, request: pytest.FixtureRequest) -> dist.Store:
    """The sim control plane configured for this test (namespace from the test id, role p0)."""
    sim.configure(store, f"t-{uuid.uuid4().hex[:8]}", "p0")
    return store


@pytest.fixture(autouse=True)
def _no_live_datadist() -> Iterator[None]:
    """Finalize whatever LLMDataDist a test left initialized, so the next one can init."""
    yield
    live = datadist.LLMDataDist.llm_engine_instance
    if live is not None:
        live.finalize()
