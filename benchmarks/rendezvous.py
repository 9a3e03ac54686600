"""Round trip of one kvtest barrier between two processes on loopback: median and p99, in ms.

    python benchmarks/rendezvous.py [--rounds 2000] [--file]

Each round both processes enter the same barrier (kvtest.run.scope.TestScope.barrier, the call the
sample tests use); the leader times entry to release. --file uses a FileStore instead of the TCPStore.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

from kvtest.roles.topology import Topology
from kvtest.run.rendezvous import PeerWatch, RunStore, open_store
from kvtest.run.scope import TestScope
from kvtest.settings import Rendezvous


def scope(rdv: Rendezvous, me: str, host: bool) -> TestScope:
    raw, _ = open_store(rdv, host=host, timeout=30)
    store = RunStore(raw, "bench", me, PeerWatch(raw, dead_after=30))
    return TestScope(store, 0, me, ("p0", "d0"), Topology(1, 1), timeout=30)


def follower(rdv: Rendezvous, rounds: int) -> None:
    d0 = scope(rdv, "d0", host=False)
    for i in range(rounds):
        d0.barrier(f"b{i}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--file", action="store_true", help="FileStore instead of TCPStore")
    args = parser.parse_args()
    if args.file:
        rdv = Rendezvous("file", path=str(Path(tempfile.mkdtemp()) / "store"))
        raw, port = open_store(rdv, host=True, timeout=30)
        p0 = TestScope(
            RunStore(raw, "bench", "p0", PeerWatch(raw, 30)), 0, "p0", ("p0", "d0"), Topology(1, 1), 30
        )
    else:
        raw, port = open_store(Rendezvous("tcp", host="127.0.0.1", port=0), host=True, timeout=30)
        rdv = Rendezvous("tcp", host="127.0.0.1", port=port)
        p0 = TestScope(
            RunStore(raw, "bench", "p0", PeerWatch(raw, 30)), 0, "p0", ("p0", "d0"), Topology(1, 1), 30
        )
    child = mp.get_context("spawn").Process(target=follower, args=(rdv, args.rounds))
    child.start()
    samples = []
    for i in range(args.rounds):
        start = time.perf_counter()
        p0.barrier(f"b{i}")
        samples.append((time.perf_counter() - start) * 1e3)
    child.join(30)
    steady = sorted(samples[10:])  # the first rounds include the follower's start-up
    p99 = steady[min(len(steady) - 1, int(0.99 * len(steady)))]
    kind = "FileStore" if args.file else "TCPStore (loopback)"
    print(
        f"barrier round trip, 2 processes, {kind}, {len(steady)} rounds: "
        f"median {statistics.median(steady):.3f} ms, p99 {p99:.3f} ms, max {steady[-1]:.3f} ms"
    )


if __name__ == "__main__":
    main()
