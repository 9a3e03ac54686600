"""A P/D program written the way the vendor's llm_datadist samples are (kvtest's own code, not the vendor's).

Both roles register two blocks caches made with ``.npu()``, meet at gloo barriers, the decoder links
to the prompt (``link_clusters``) and pushes three blocks into it (``push_blocks``); the prompt reads
its cache through torchair's ``create_npu_tensors`` views and checks every byte. Exit codes: 0 passed,
2 link failed, 3 byte check failed. Same arguments as the vendor's push_blocks sample; ports are
exchanged over the gloo group instead of being fixed.
"""

import argparse
import datetime
import logging
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch_npu  # noqa: F401
import torchair
from llm_datadist import (
    BlocksCacheKey,
    CacheDesc,
    DataType,
    LLMClusterInfo,
    LLMConfig,
    LLMDataDist,
    LLMRole,
    LLMStatusCode,
    Placement,
)

logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)

PROMPT_CLUSTER, DECODER_CLUSTER = 0, 1
NUM_TENSORS, BLOCKS, ROW = 2, 4, 16
SRC_BLOCKS, DST_BLOCKS = [0, 1, 2], [3, 1, 0]  # prompt block 2 must stay untouched
LINK_FAILED, BYTES_WRONG = 2, 3


def block_values(tensor_index: int, block: int) -> torch.Tensor:
    """What the decoder writes into (tensor, block): distinct for every pair."""
    return torch.arange(ROW, dtype=torch.float) + 1000 * tensor_index + 100 * block + 1


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device_id", type=int, default=0)
    parser.add_argument("--role", choices=["p", "d"], required=True)
    parser.add_argument("--local_host_ip", default="127.0.0.1")
    parser.add_argument("--remote_host_ip", default="127.0.0.1")
    args = parser.parse_args()
    prompt = args.role == "p"

    torch.npu.set_device(args.device_id)
    os.environ.setdefault("MASTER_ADDR", min(args.local_host_ip, args.remote_host_ip))
    os.environ.setdefault("MASTER_PORT", "29500")
    dist.init_process_group(
        "gloo", rank=0 if prompt else 1, world_size=2, timeout=datetime.timedelta(seconds=30)
    )
    port = free_port(args.local_host_ip)
    ports = [0, 0]
    dist.all_gather_object(ports, port)

    cluster_id = PROMPT_CLUSTER if prompt else DECODER_CLUSTER
    datadist = LLMDataDist(LLMRole.PROMPT if prompt else LLMRole.DECODER, cluster_id)
    config = LLMConfig()
    config.device_id = args.device_id
    config.local_comm_res = ""
    config.listen_ip_info = f"{args.local_host_ip}:{port}"
    datadist.init(config.generate_options())
    logging.info("init %s success, cluster_id=%d", args.role, cluster_id)

    cache_manager = datadist.cache_manager
    desc = CacheDesc(NUM_TENSORS, [BLOCKS, ROW], DataType.DT_FLOAT, Placement.DEVICE)
    if prompt:
        tensors = [torch.zeros(BLOCKS, ROW).npu() for _ in range(NUM_TENSORS)]
    else:
        tensors = [torch.stack([block_values(t, b) for b in range(BLOCKS)]).npu() for t in range(NUM_TENSORS)]
    addrs = [int(t.data_ptr()) for t in tensors]
    cache = cache_manager.register_blocks_cache(desc, addrs, BlocksCacheKey(cluster_id, 0))
    views = torchair.llm_datadist.create_npu_tensors(desc.shape, torch.float, addrs)
    dist.barrier()  # both registered

    code = 0
    peer = LLMClusterInfo()
    peer.remote_cluster_id = DECODER_CLUSTER if prompt else PROMPT_CLUSTER
    if not prompt:
        peer.append_local_ip_info(args.local_host_ip, port)
        peer.append_remote_ip_info(args.remote_host_ip, ports[0])
        ret, rets = datadist.link_clusters([peer], 5000)
        if ret != LLMStatusCode.LLM_SUCCESS:
            logging.error("ERROR link_clusters returned %s %s", ret, rets)
            code = LINK_FAILED
        else:
            cache_manager.push_blocks(
                BlocksCacheKey(PROMPT_CLUSTER, 0), cache, src_blocks=SRC_BLOCKS, dst_blocks=DST_BLOCKS
            )
            logging.info("push_blocks success")
    dist.barrier()  # pushed

    if prompt:
        expected = [torch.zeros(BLOCKS, ROW) for _ in range(NUM_TENSORS)]
        for t in range(NUM_TENSORS):
            for src, dst in zip(SRC_BLOCKS, DST_BLOCKS):
                expected[t][dst] = block_values(t, src)
        for t, (view, want) in enumerate(zip(views, expected)):
            got, exp = view.cpu().view(torch.uint8).flatten(), want.view(torch.uint8).flatten()
            wrong = (got != exp).nonzero().flatten().tolist()
            if wrong:
                first = wrong[0]
                logging.error(
                    "ERROR byte check failed: tensor %d block %d offset %d: %d byte(s) differ, got %#04x expected %#04x",
                    t,
                    first // (ROW * 4),
                    first % (ROW * 4),
                    len(wrong),
                    int(got[first]),
                    int(exp[first]),
                )
                code = BYTES_WRONG
        if code == 0:
            logging.info("byte check passed: %d tensors x %d blocks", NUM_TENSORS, BLOCKS)
    else:
        ret, _ = datadist.unlink_clusters([peer], 5000, force=True)
        if ret != LLMStatusCode.LLM_SUCCESS:
            logging.error("ERROR unlink_clusters returned %s", ret)
            code = LINK_FAILED
    cache_manager.unregister_cache(cache.cache_id)
    datadist.finalize()
    logging.info("Sample end, code %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
