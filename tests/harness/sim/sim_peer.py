"""The other process of the sim two-process tests: runs scenario roles the test process asks for.

    python sim_peer.py --port PORT --root ROOT [--once]

It connects to the test's TCPStore, waits for ``ROOT/cmd/<n>`` (JSON: scenario, role, namespace,
params, env), runs that role from :mod:`sim_scenarios`, and answers ``ROOT/result/<n>``. Every wait
has a deadline; with ``--once`` it runs one command and exits.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

IDLE_LIMIT_S = 300.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args()

    import sim_scenarios
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", args.port, is_master=False, timeout=datetime.timedelta(seconds=30))
    store.set(f"{args.root}/ready", str(os.getpid()))
    n = 0
    while True:
        key = f"{args.root}/cmd/{n}"
        idle_until = time.monotonic() + IDLE_LIMIT_S
        while not store.check([key]):
            if time.monotonic() > idle_until:
                return 3
            time.sleep(0.005)
        cmd = json.loads(store.get(key))
        if cmd.get("exit"):
            return 0
        os.environ.update(cmd.get("env", {}))
        try:
            sim_scenarios.run_role(store, cmd["scenario"], cmd["role"], cmd["namespace"], cmd["params"], None)
            result = {"ok": True}
        except BaseException:  # noqa: BLE001 - every failure goes back to the test process
            result = {"ok": False, "error": traceback.format_exc()}
        for name in cmd.get("env", {}):
            os.environ.pop(name, None)
        store.set(f"{args.root}/result/{n}", json.dumps(result))
        n += 1
        if args.once:
            return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # skip native destructors (NIXL, UCX) at interpreter exit, as NIXL's own tests do
    os._exit(code)
