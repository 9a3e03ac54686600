"""The data plane: one NIXL agent (UCX) per LLMDataDist; pulls are READ, pushes are WRITE.

UCX picks shared memory between processes on one host and TCP when ``UCX_TLS=tcp``. Bytes move
only here, from registered memory to registered memory.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from kvtest.backends.sim.status import LLMStatusCode

#: (local address, remote address, bytes)
Segment = tuple[int, int, int]

_MAX_CACHED_HANDLES = 64

#: how long (microseconds) the agent's progress thread sleeps in ``poll`` between wake-ups when no UCX
#: event arrives. nixl_agent's Python constructor sets 0 (``pthrDelay = 0`` in nixl_cu12/_api.py), and
#: with 0 the UCX backend's shared progress thread polls with a zero timeout: a busy loop
#: (nixl src/plugins/ucx/ucx_thread_engine.cpp, ``nixlUcxSharedThread::run``). Measured here: an idle
#: agent then burns 0.65 of a core (user 0.24 s + sys 1.05 s per 2 s), with 1000 us 0.025. Events still
#: wake the thread at once (it polls the worker's event fd); the delay only bounds the periodic wake-up.
PROGRESS_DELAY_US = 1000
_agent_lock = threading.Lock()

#: NIXL agents of closed transports of this process, clean (no memory, peers or handles, no transfer in
#: flight), as (name, agent). The next :class:`Transport` takes one instead of making its own: a UCX
#: context is most of a sim ``LLMDataDist.init`` (24 ms alone, 80 ms per role with two roles on two
#: cores, measured here), and a sample test inits one per role. An idle agent costs its progress
#: thread's 1 ms wake-ups only (:data:`PROGRESS_DELAY_US`).
_idle_agents: list[tuple[str, Any]] = []
_idle_lock = threading.Lock()
#: at most this many idle agents are kept (a process runs one LLMDataDist at a time)
MAX_IDLE_AGENTS = 2
_versions = itertools.count(1)

#: how long (seconds) the first transfer to a peer may spend setting up its connection before the
#: transfer's own deadline starts: link_clusters' default timeout (3000 ms). UCX wires an endpoint up on
#: its first use, in round trips the peer's progress thread answers; the real llm_datadist sets its
#: connection up in link_clusters (link_mgr/llm_link_manager.cc), so sync_kv_timeout never covers it.
#: Measured here: a first 1 KiB transfer 4-53 ms, later ones 0.1 ms (2 cores, 9 busy processes); with
#: the peer process stopped, the first waits for it to run again.
WIREUP_LIMIT_S = 3.0
#: how long a connection's set-up sleeps between polls: its round trips wait for the peer's progress
#: thread, which a caller polling without a pause keeps from the CPU on a busy host
WIREUP_POLL_S = 0.0002
#: bytes of the word each transport registers for peers to read when they set a connection up
PROBE_BYTES = 8


#: how long a new Transport waits for the background warm-up's agent before it makes its own
WARM_UP_LIMIT_S = 10.0
_warm_up: threading.Thread | None = None


def warm_up(role: str) -> None:
    """Make this process's first agent in the background, for the first :class:`Transport` to take.

    The first agent of a process costs 0.45 s here (UCX's and NIXL's one-time set-up: plugins, context),
    later ones 20 ms; a role would otherwise pay it inside its first test, while its peer waits. Started
    when the session begins, it overlaps the wait for the other roles to start and join. Once per
    process; a failure here is left to the first Transport, which then makes its own agent and reports it.
    """
    global _warm_up
    with _idle_lock:
        if _warm_up is not None or _idle_agents:
            return

        name = f"kvtest-sim/warm/{role}/{os.getpid()}"

        def make() -> None:
            try:
                agent = make_agent(name)
            except Exception:  # noqa: BLE001 - the first Transport makes and reports its own
                return
            with _idle_lock:
                _idle_agents.append((name, agent))

        _warm_up = threading.Thread(target=make, name="kvtest-sim-warm-up", daemon=True)
        _warm_up.start()


def drop_idle_agents() -> None:
    """Destroy the idle agents now. Registered at exit: left to the interpreter's teardown, an agent that
    had lost a peer's connection crashed the process there (SIGSEGV, seen in the network-flap test).
    A warm-up still making its agent is waited for first, so that agent is destroyed here too."""
    if _warm_up is not None:
        _warm_up.join(WARM_UP_LIMIT_S)
    with _idle_lock:
        idle = list(_idle_agents)
        _idle_agents.clear()
    del idle


atexit.register(drop_idle_agents)


def next_version() -> int:
    """A version for published agent metadata, never repeated in this process: a reused agent keeps
    its name, and a peer reloads it only when the version changed."""
    return next(_versions)


def make_agent(agent_name: str, delay_us: int = PROGRESS_DELAY_US) -> Any:
    """A NIXL agent with the UCX backend whose progress thread waits ``delay_us`` between idle wake-ups.

    nixl_agent offers no parameter for it, so its constructor runs with a config class whose
    ``pthrDelay`` keeps at least ``delay_us``; everything else is nixl_agent's own.
    """
    api: Any = importlib.import_module("nixl_cu12._api")
    real: Any = api.nixlBind

    class _Config(real.nixlAgentConfig):  # type: ignore[misc]
        @property
        def pthrDelay(self) -> int:  # noqa: N802 - the binding's name
            return int(real.nixlAgentConfig.pthrDelay.__get__(self))

        @pthrDelay.setter
        def pthrDelay(self, value: int) -> None:  # noqa: N802
            real.nixlAgentConfig.pthrDelay.__set__(self, max(int(value), delay_us))

    class _Binding:
        nixlAgentConfig = _Config  # noqa: N815

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    with _agent_lock:
        api.nixlBind = _Binding()
        try:
            return api.nixl_agent(agent_name, api.nixl_agent_config(backends=["UCX"]))
        finally:
            api.nixlBind = real


class TransferError(Exception):
    """A transfer that failed; the cache manager rewords it as ``[api] failed, error code is ...``."""

    def __init__(self, code: LLMStatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def merge_segments(segments: Sequence[Segment]) -> list[Segment]:
    """Join neighbours that are contiguous on both sides, so whole runs of blocks go as one descriptor."""
    merged: list[Segment] = []
    for local, remote, size in segments:
        if size <= 0:
            continue
        if merged:
            last_local, last_remote, last_size = merged[-1]
            if last_local + last_size == local and last_remote + last_size == remote:
                merged[-1] = (last_local, last_remote, last_size + size)
                continue
        merged.append((local, remote, size))
    return merged


def union_regions(regions: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(addr, nbytes)`` regions, the empty ones left out and those that touch or overlap joined."""
    joined: list[list[int]] = []
    for addr, nbytes in sorted((a, n) for a, n in regions if n > 0):
        if joined and addr <= joined[-1][0] + joined[-1][1]:
            joined[-1][1] = max(joined[-1][1], addr + nbytes - joined[-1][0])
        else:
            joined.append([addr, nbytes])
    return [(a, n) for a, n in joined]


def _flip_byte(addr: int) -> int:
    cell = ctypes.c_uint8.from_address(addr)
    old = int(cell.value)
    cell.value = old ^ 0xFF
    return old


class Transport:
    """A NIXL agent, the memory it registered, the peers it loaded, and prepared transfer handles."""

    def __init__(self, agent_name: str) -> None:
        if _warm_up is not None:
            _warm_up.join(WARM_UP_LIMIT_S)
        with _idle_lock:
            idle = _idle_agents.pop() if _idle_agents else None
        self._agent: Any
        if idle is not None:
            self.name, self._agent = idle
        else:
            self.name = agent_name
            self._agent = make_agent(agent_name)
        self._regs: dict[int, Any] = {}
        self._next_reg = 1
        self._peer_versions: dict[str, int] = {}
        self._peer_probes: dict[str, int] = {}  # peers not yet connected: the address of their probe word
        self._handles: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._abandoned: list[Any] = []
        self._in_flight = 0  # transfers running now (another thread's may outlive a close)
        self._lock = threading.RLock()
        self._probe = ctypes.create_string_buffer(PROBE_BYTES)
        self.register([(ctypes.addressof(self._probe), PROBE_BYTES)])

    # -- memory --------------------------------------------------------------------------------
    def register(self, regions: Sequence[tuple[int, int]]) -> int:
        """Register ``(addr, nbytes)`` regions as DRAM; return a token for :meth:`deregister`.

        Regions that touch or overlap are registered as one: :func:`merge_segments` joins a transfer's
        contiguous segments, and NIXL refuses a descriptor that spans two registrations, so a cache whose
        tensors are neighbours in memory (views of one buffer) could not move a run crossing them."""
        with self._lock:
            reg = self._agent.register_memory([(a, n, 0, "") for a, n in union_regions(regions)], "DRAM")
            token = self._next_reg
            self._next_reg += 1
            self._regs[token] = reg
            self._drop_handles(None)
            return token

    def deregister(self, token: int) -> None:
        with self._lock:
            reg = self._regs.pop(token, None)
            if reg is not None:
                self._drop_handles(None)
                self._agent.deregister_memory(reg)

    @property
    def probe_address(self) -> int:
        """Where this transport's probe word lies: publish it with :meth:`metadata` for
        :meth:`load_peer`'s ``probe``."""
        return ctypes.addressof(self._probe)

    def metadata(self) -> bytes:
        with self._lock:
            return bytes(self._agent.get_agent_metadata())

    # -- peers ---------------------------------------------------------------------------------
    def load_peer(self, agent_name: str, metadata: bytes, version: int, probe: int | None = None) -> None:
        """Load (or reload, when ``version`` changed) a peer's metadata: its registered memory.

        :param probe: the peer's :attr:`probe_address`: the first transfer to the peer then sets the
            connection up by reading it, within :data:`WIREUP_LIMIT_S`, before its own deadline starts.
        """
        with self._lock:
            if agent_name == self.name:  # a link to oneself: NIXL transfers to its own agent as is
                return
            if self._peer_versions.get(agent_name) == version:
                return
            if agent_name in self._peer_versions:
                # and its connection with it: NIXL keeps a peer's old regions when new metadata is loaded
                # over them, so a region the peer gave back would stay readable
                self._drop_handles(agent_name)
                self._agent.remove_remote_agent(agent_name)
                del self._peer_versions[agent_name]
            self._agent.add_remote_agent(metadata)
            self._peer_versions[agent_name] = version
            self._peer_probes.pop(agent_name, None)
            if probe is not None:
                self._peer_probes[agent_name] = probe

    def unconnected(self) -> list[str]:
        """The loaded peers whose connection is not set up yet (:meth:`connect`)."""
        with self._lock:
            return sorted(self._peer_probes)

    def forget_peer(self, agent_name: str) -> None:
        with self._lock:
            if agent_name in self._peer_versions:
                self._drop_handles(agent_name)
                self._agent.remove_remote_agent(agent_name)
                del self._peer_versions[agent_name]
            self._peer_probes.pop(agent_name, None)

    # -- transfers -----------------------------------------------------------------------------
    def _drop_handles(self, peer: str | None) -> None:
        for key in [k for k in self._handles if peer is None or k[1] == peer]:
            self._agent.release_xfer_handle(self._handles.pop(key))

    def _handle(self, op: str, peer: str, segments: list[Segment]) -> Any:
        key = (op, peer, tuple(segments))
        with self._lock:
            handle = self._handles.get(key)
            if handle is not None:
                self._handles.move_to_end(key)
                return handle
            local = self._agent.get_xfer_descs([(loc, n, 0) for loc, _, n in segments], "DRAM")
            remote = self._agent.get_xfer_descs([(rem, n, 0) for _, rem, n in segments], "DRAM")
            handle = self._agent.initialize_xfer(op, local, remote, peer)
            self._handles[key] = handle
            while len(self._handles) > _MAX_CACHED_HANDLES:
                _, old = self._handles.popitem(last=False)
                self._agent.release_xfer_handle(old)
            return handle

    def _abandon(self, op: str, peer: str, segments: list[Segment]) -> None:
        # a handle still in flight must not be released or re-posted: park it until close
        with self._lock:
            handle = self._handles.pop((op, peer, tuple(segments)), None)
            if handle is not None:
                self._abandoned.append(handle)

    def transfer(
        self,
        op: str,
        peer: str,
        segments: Sequence[Segment],
        deadline: float,
        *,
        flip: bool = False,
        stall: bool = False,
    ) -> None:
        """Move ``segments`` (READ: remote to local, WRITE: local to remote) and wait until ``deadline``,
        which moves on by the time the first transfer to a peer takes to set its connection up.

        :param flip: fault injection: one byte arrives wrong on the receiving side.
        :param stall: fault injection: the transfer never completes (LLM_TIMEOUT at the deadline).
        :raises TransferError: LLM_TIMEOUT past the deadline, LLM_FAILED when NIXL refuses or fails.
        """
        merged = merge_segments(segments)
        if not merged:
            return
        if stall:
            time.sleep(max(0.0, deadline - time.monotonic()))
            raise TransferError(LLMStatusCode.LLM_TIMEOUT, "transfer did not complete in time (stall fault)")
        deadline += self.connect(peer)
        try:
            handle = self._handle(op, peer, merged)
        except Exception as exc:
            raise TransferError(
                LLMStatusCode.LLM_FAILED, f"nixl could not prepare the transfer: {exc!r}"
            ) from exc
        restore: int | None = None
        if flip and op == "WRITE":
            restore = _flip_byte(merged[0][0])
        try:
            state = self._post(handle, deadline)
        except Exception as exc:
            self._abandon(op, peer, merged)
            raise TransferError(LLMStatusCode.LLM_FAILED, f"nixl transfer failed: {exc!r}") from exc
        finally:
            if restore is not None:
                ctypes.c_uint8.from_address(merged[0][0]).value = restore
        if state == "PROC":
            self._abandon(op, peer, merged)
            raise TransferError(LLMStatusCode.LLM_TIMEOUT, "transfer did not complete in time")
        if state != "DONE":
            self._abandon(op, peer, merged)
            raise TransferError(LLMStatusCode.LLM_FAILED, f"nixl transfer ended in state {state}")
        if time.monotonic() > deadline:
            # done, but later than the wait allows: the native wait (aclrtSynchronizeStreamWithTimeout in
            # CommEntity::BatchTransfer, hicann/hixl src/llm_datadist/link_mgr/comm_entity.cc) has given up
            raise TransferError(LLMStatusCode.LLM_TIMEOUT, "transfer did not complete in time")
        if flip and op == "READ":
            _flip_byte(merged[0][0])

    def _post(self, handle: Any, until: float, pause_s: float = 0.0) -> str:
        """Post ``handle`` and poll it until it leaves ``PROC`` or ``until`` passes, sleeping ``pause_s``
        between polls; its last state (``PROC``: still in flight, for the caller to abandon). Raises what
        NIXL raises."""
        with self._lock:
            self._in_flight += 1
        try:
            state = str(self._agent.transfer(handle))
            while state == "PROC" and time.monotonic() < until:
                if pause_s:
                    time.sleep(pause_s)
                state = str(self._agent.check_xfer_state(handle))
            return state
        finally:
            with self._lock:
                self._in_flight -= 1

    def connect(self, peer: str, limit_s: float | None = None) -> float:
        """Set the connection to a loaded ``peer`` up, where it is not yet, by reading its probe word within
        ``limit_s`` (default :data:`WIREUP_LIMIT_S`); the seconds that took (0 when there was nothing to
        do, or NIXL refused: the transfer itself then meets what stopped the probe, and reports it).

        The link calls it, as the real llm_datadist sets its connection up when it links (the client's
        ``LinkCluster`` and the server's connect request both end in ``ExchangeInfoProcess``, which
        initializes the entity's communication: hicann/hixl src/llm_datadist/link_mgr/link_msg_handler.cc),
        so a transfer after it times its bytes only. A transfer calls it too, for a peer loaded since the
        link (it registered memory again) or never linked from this side.

        :raises TransferError: LLM_TIMEOUT when the connection is not up within the limit.
        """
        if limit_s is None:
            limit_s = WIREUP_LIMIT_S
        with self._lock:
            remote = self._peer_probes.get(peer)
        if remote is None:
            return 0.0
        start = time.monotonic()
        segment = [(ctypes.addressof(self._probe), remote, PROBE_BYTES)]
        try:
            handle = self._handle("READ", peer, segment)
        except Exception:  # noqa: BLE001 - the transfer reports what NIXL refuses
            return 0.0
        try:
            state = self._post(handle, start + limit_s, WIREUP_POLL_S)
        except Exception:  # noqa: BLE001
            state = "ERR"
        if state != "DONE":
            self._abandon("READ", peer, segment)
            if state == "PROC":
                raise TransferError(
                    LLMStatusCode.LLM_TIMEOUT,
                    f"no connection to {peer} within {limit_s * 1000:.0f} ms (the sim sets a connection up "
                    "when it links, and again on a transfer after the peer registered memory)",
                )
            return 0.0
        with self._lock:
            if self._handles.pop(("READ", peer, tuple(segment)), None) is handle:
                self._agent.release_xfer_handle(handle)
            if self._peer_probes.get(peer) == remote:
                del self._peer_probes[peer]
        return time.monotonic() - start

    def close(self) -> None:
        """Release every handle, peer and registration. The clean agent goes back to the idle pool; one
        with a transfer still in flight or an abandoned handle is dropped with this object."""
        with self._lock:
            self._drop_handles(None)
            for name in list(self._peer_versions):
                self.forget_peer(name)
            for token in list(self._regs):
                self.deregister(token)
            if self._agent is None or self._abandoned or self._in_flight:
                return
            agent, self._agent = self._agent, None
        with _idle_lock:
            if len(_idle_agents) < MAX_IDLE_AGENTS:
                _idle_agents.append((self.name, agent))
