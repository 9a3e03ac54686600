"""A P/D program written the way the vendor's pull_cache sample is (kvtest's own code, not the vendor's).

Single host, two-sided link: the rank table is built from the ``/dev/davinciN`` nodes and
``hccn_tool -i N -ip -g``, as the vendor's single-host mode does. The prompt allocates a cache from
the memory pool under a cache key and fills it through torchair's ``create_npu_tensors``; the decoder
pulls it (``pull_cache``) and checks every byte. Exit codes: 0 passed, 2 link failed, 3 byte check
failed, 4 no device node or device IP. Same arguments as the vendor's pull_cache sample.
"""

import argparse
import datetime
import json
import logging
import os
import subprocess
import sys
import time

import torch
import torch.distributed as dist
import torchair
from llm_datadist import (
    CacheDesc,
    CacheKey,
    DataType,
    LLMConfig,
    LLMDataDist,
    LLMRole,
    Placement,
    RegisterMemStatus,
)

logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)

NUM_TENSORS, SHAPE = 2, [2, 512]  # batch 2, 512 fp16 values per slot
LINK_FAILED, BYTES_WRONG, NO_DEVICE = 2, 3, 4


def expected(tensor_index: int) -> torch.Tensor:
    values = torch.arange(SHAPE[1], dtype=torch.float16) + 7 * tensor_index
    return torch.stack([values, -values])


def device_ip(physical_id: int) -> str:
    out = subprocess.run(["hccn_tool", "-i", str(physical_id), "-ip", "-g"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("ipaddr:"):
            return line.split(":", 1)[1].strip()
    return ""


def rank_table(host_ip: str, device_ids: list) -> dict:
    nodes = sorted(int(n[len("davinci"):]) for n in os.listdir("/dev") if n[len("davinci"):].isdigit())
    missing = [d for d in device_ids if d not in nodes]
    if missing:
        raise LookupError(f"no /dev/davinci node for device(s) {missing} (have {nodes})")
    devices = []
    for rank, device in enumerate(device_ids):
        ip = device_ip(device)
        if not ip:
            raise LookupError(f"hccn_tool reported no ipaddr for device {device}")
        devices.append({"device_id": str(device), "device_ip": ip, "rank_id": str(rank)})
    return {"server_count": "1", "status": "completed", "version": "1.2",
            "server_list": [{"device": devices, "host_ip": host_ip, "server_id": "1"}]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device_id", type=int, default=0)
    parser.add_argument("--cluster_id", type=int, choices=[1, 2], default=1)
    parser.add_argument("--is_single", type=str)
    parser.add_argument("--host_ip", type=str, default="127.0.0.1")
    args = parser.parse_args()
    prompt = args.cluster_id == 1

    torch.npu.set_device(args.device_id)
    os.environ.setdefault("MASTER_ADDR", args.host_ip)
    os.environ.setdefault("MASTER_PORT", "29500")
    dist.init_process_group("gloo", rank=args.cluster_id - 1, world_size=2, timeout=datetime.timedelta(seconds=30))
    device_ids = [0, 0]
    dist.all_gather_object(device_ids, args.device_id)

    datadist = LLMDataDist(LLMRole.PROMPT if prompt else LLMRole.DECODER, args.cluster_id)
    config = LLMConfig()
    config.device_id = args.device_id
    config.enable_cache_manager = True
    config.mem_pool_cfg = json.dumps({"memory_size": 16 * 1024 * 1024})
    datadist.init(config.generate_options())

    try:
        table = json.dumps(rank_table(args.host_ip, device_ids))
    except LookupError as exc:
        logging.error("ERROR %s", exc)
        return NO_DEVICE
    comm_id = datadist.link("kvtest_style", {1: 0, 2: 1}, table)
    deadline = time.monotonic() + 30
    status = datadist.query_register_mem_status(comm_id)
    while status == RegisterMemStatus.PREPARING and time.monotonic() < deadline:
        time.sleep(0.1)
        status = datadist.query_register_mem_status(comm_id)
    if status != RegisterMemStatus.OK:
        logging.error("ERROR link did not come up: %s", status)
        return LINK_FAILED

    cache_manager = datadist.cache_manager
    desc = CacheDesc(NUM_TENSORS, SHAPE, DataType.DT_FLOAT16, Placement.DEVICE)
    key = CacheKey(prompt_cluster_id=1, req_id=0, model_id=0)
    code = 0
    if prompt:
        cache = cache_manager.allocate_cache(desc, [key])
        for t, view in enumerate(torchair.llm_datadist.create_npu_tensors(SHAPE, torch.float16, cache.tensor_addrs)):
            view.copy_(expected(t).npu())
        dist.barrier()  # cache ready
        dist.barrier()  # pulled
    else:
        cache = cache_manager.allocate_cache(desc)
        dist.barrier()  # cache ready
        cache_manager.pull_cache(key, cache, batch_index=0)
        views = torchair.llm_datadist.create_npu_tensors(SHAPE, torch.float16, cache.tensor_addrs)
        for t, view in enumerate(views):
            got = view.cpu()[0].view(torch.uint8)
            want = expected(t)[0].view(torch.uint8)
            wrong = (got != want).nonzero().flatten().tolist()
            if wrong:
                logging.error("ERROR byte check failed: tensor %d offset %d: %d byte(s) differ", t, wrong[0], len(wrong))
                code = BYTES_WRONG
        if code == 0:
            logging.info("pull_cache byte check passed")
        dist.barrier()  # pulled
    datadist.unlink(comm_id)
    dist.barrier()  # both unlinked
    if prompt:
        cache_manager.remove_cache_key(key)
    cache_manager.deallocate_cache(cache)
    datadist.finalize()
    logging.info("Sample end, code %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
