"""One side of a two-process pull_blocks through the real llm_datadist and kvtest's HCCL transport.

``python pair.py p|d PORT FOLDER``: p registers a blocks cache of known bytes and listens on PORT; d
links to it with ``link_clusters``, pulls blocks 1 and 3 of p into its blocks 2 and 0, checks every byte
of its cache (pulled blocks equal p's, the rest untouched) and writes ``FOLDER/d.json``. The two sides
meet through files in FOLDER. Standard library and the real ``llm_datadist`` only.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from pathlib import Path

import llm_datadist as ld

NUM_TENSORS = 2
NUM_BLOCKS = 4
BLOCK_BYTES = 1024
PULL = {1: 2, 3: 0}  # p's block -> d's block
DEADLINE_S = 60.0


def expected(side: str, tensor: int, block: int) -> bytes:
    seed = 11 if side == "p" else 97
    return bytes((seed + tensor * 53 + block * 29 + i * 7) & 0xFF for i in range(BLOCK_BYTES))


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear within {DEADLINE_S:.0f} s: the peer is gone")
        time.sleep(0.05)


def main(side: str, port: int, folder: Path) -> None:
    role = ld.LLMRole.PROMPT if side == "p" else ld.LLMRole.DECODER
    cluster_id = 1 if side == "p" else 2
    dd = ld.LLMDataDist(role, cluster_id)
    config = ld.LLMConfig()
    config.device_id = 0 if side == "p" else 1
    config.enable_cache_manager = True
    if side == "p":
        config.listen_ip_info = f"127.0.0.1:{port}"
    dd.init(config.generate_options())
    buffers = [ctypes.create_string_buffer(NUM_BLOCKS * BLOCK_BYTES) for _ in range(NUM_TENSORS)]
    for t, buf in enumerate(buffers):
        for b in range(NUM_BLOCKS):
            ctypes.memmove(ctypes.addressof(buf) + b * BLOCK_BYTES, expected(side, t, b), BLOCK_BYTES)
    desc = ld.CacheDesc(NUM_TENSORS, [NUM_BLOCKS, BLOCK_BYTES], ld.DataType.DT_UINT8, ld.Placement.DEVICE)
    addrs = [ctypes.addressof(buf) for buf in buffers]
    cm = dd.cache_manager
    try:
        if side == "p":
            cm.register_blocks_cache(desc, addrs, ld.BlocksCacheKey(1, 0))
            (folder / "p.ready").touch()
            wait_for(folder / "d.json")
            return
        cache = cm.register_blocks_cache(desc, addrs)
        wait_for(folder / "p.ready")
        cluster = ld.LLMClusterInfo()
        cluster.remote_cluster_id = 1
        cluster.append_local_ip_info("127.0.0.1", port + 1)
        cluster.append_remote_ip_info("127.0.0.1", port)
        ret, codes = dd.link_clusters([cluster], 10000)
        if ret != ld.LLMStatusCode.LLM_SUCCESS:
            raise SystemExit(f"link_clusters failed: {ret} {codes}")
        cm.pull_blocks(ld.BlocksCacheKey(1, 0), cache, src_blocks=list(PULL), dst_blocks=list(PULL.values()))
        wrong = []
        for t, buf in enumerate(buffers):
            source = {dst: src for src, dst in PULL.items()}
            for b in range(NUM_BLOCKS):
                want = expected("p", t, source[b]) if b in source else expected("d", t, b)
                got = ctypes.string_at(ctypes.addressof(buf) + b * BLOCK_BYTES, BLOCK_BYTES)
                if got != want:
                    first = next(i for i in range(BLOCK_BYTES) if got[i] != want[i])
                    wrong.append({"tensor": t, "block": b, "offset": first})
        dd.unlink_clusters([cluster], 5000, force=True)
        (folder / "d.json").write_text(
            json.dumps({"checked_bytes": NUM_TENSORS * NUM_BLOCKS * BLOCK_BYTES, "wrong": wrong})
        )
    finally:
        dd.finalize()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
