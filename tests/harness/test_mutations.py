"""The mutation matrix: every fault the sim can inject must make the product suite fail, saying why.

``MATRIX`` is the one table: (fault, sample test, what its failure must say). A fault is
``KVTEST_SIM_FAULT``'s ``<kind>@<api>:<role>``; the sample test is the smallest case that exercises
that api on that role; the expected text names the cause (tensor, layer and block of a KV mismatch,
or a status code). ``test_the_matrix_*`` keep the table complete: every (kind, api) the sim can
inject is in it or in ``NOT_APPLICABLE`` with the reason, every sample file and every api appears.

Cost: rows are packed into as few pytest runs as possible: one run per batch of rows of one kind
whose faults can all be active at once (comma-separated ``KVTEST_SIM_FAULT``) because no test of the
batch calls another row's faulted api on that role (``CALLS`` says which test calls what); that is
the whole matrix, with its unfaulted control, in the full lane (``KVTEST_HARNESS_FULL=1``, as .ci/run). By
default, ``DEFAULT`` takes one row of each fault kind, each on a case of its own, into ONE run where
each fault acts only in its row's case (``KVTEST_SIM_FAULT_SCOPE``), plus the same cases without
faults (the control: a sample that always failed with the same message would otherwise look like it
catches every mutation). Measured on the shared 2-core machine (load 6-7): 50 s by default, where the
four batches it replaces took 141 s.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvtest.backends.sim.faults import KIND_APIS, parse_fault

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "samples"


def mismatch(role: str, check: str) -> str:
    """What Node.check reports for a KV mismatch: role, check, tensor, layer and block."""
    return (
        rf"KV mismatch in {role} {re.escape(check)}: tensor \d+ \(layer \d+, tensors_per_layer=\d+\), "
        rf"block \d+ of \d+"
    )


def status(api: str, code: str) -> str:
    return rf"\[{api}\] failed, error code is LLMStatusCode\.{code}"


MISPLACED = r"block \d+ holds the bytes expected in block \d+ \(a misplaced block\)"

# the smallest case of each sample flow that exercises the api (ids as collected on the smoke profile)
PULL_CACHE = "test_pull_cache.py::test_pull_cache[fp32-slots(1)-deallocated-first]"
PULL_CACHE_MOVED = "test_pull_cache.py::test_pull_cache[bf16-slots(2->0,0->3)]"  # batch indices != 0
PULL_CACHE_LAYERS = "test_pull_cache.py::test_pull_cache[int8-slots(0,1)-layers(0:1->1:2)]"
PULL_BLOCKS = "test_pull_blocks.py::test_pull_blocks[bf16-blocks(5)->(0)]"
PULL_BLOCKS_MANY = "test_pull_blocks.py::test_pull_blocks[fp16-blocks(0,3,5)->(7,1,2)-layers[1:2]->[0:1]]"
PULL_BLOCKS_RELINK = (
    "test_pull_blocks.py::test_pull_blocks[int8-blocks(0,2,4,6,8,10,12,14)->(1,3,5,7,9,11,13,15)-then-relink-unregister]"
)
PULL_BLOCKS_LAYERS = "test_pull_blocks.py::test_pull_blocks[fp16-blocks(1,3)->(2,0)-layers[0:2]->[2:4]]"
CACHE_TO_BLOCKS = "test_pull_from_cache_to_blocks.py::test_pull_from_cache_to_blocks[fp32-slot1->blocks(3,1)]"
XPYD = "test_pull_blocks_xpyd.py::test_pull_blocks_1p2d[fp32-blocks(0,1)->(0,2)]"
PUSH_BLOCKS = "test_push_blocks.py::test_push_blocks[bf16-blocks(3)->(0)]"
PUSH_BLOCKS_MANY = "test_push_blocks.py::test_push_blocks[fp16-blocks(5,1,0)->(7,2,3)]"
PUSH_CACHE = "test_push_cache.py::test_push_cache[fp16-4x4x512-slot3->1]"
PUSH_CACHE_LAYERS = "test_push_cache.py::test_push_cache[fp16-8x3x256-slot2->1-layers[3:4]]"
SWITCH_ROLE = "test_switch_role.py::test_switch_role[fp32-L2x1-3x10-layers[0:2]->[0:2]-blocks(0,1)->(0,2)]"
SWITCH_ROLE_LAYERS = "test_switch_role.py::test_switch_role[bf16-L2x2-5x256-layers[0:1]->[1:2]-blocks(4)->(0)]"
ASYNC = "test_transfer_cache_async.py::test_transfer_cache_async[fp16-L4x2-4x509-layers[0:4]->[0:4]]"
ASYNC_REFUSED = "test_transfer_cache_async.py::test_transfer_cache_async[int8-L3x2-8x1024-layers[0:3]->[0:3]-refuse1]"
ASYNC_LINK_LOST = "test_transfer_cache_async.py::test_transfer_cache_async_reports_a_failed_layer"
#: the case that hits the known upstream issue transfer-layers-absolute-dst-index: a strict xfail
#: unfaulted, and every fault below must FAIL it (the issue hides only its own symptom)
ASYNC_KNOWN_ISSUE = "test_transfer_cache_async.py::test_transfer_cache_async[bf16-L6x2-5x256-layers[1:4]->[2:5]-partial]"
#: matrix cases that are strict xfails unfaulted (a known upstream issue)
XFAIL_UNFAULTED = {ASYNC_KNOWN_ISSUE}
HIXL = "test_hixl_transfer_backend.py::test_hixl_transfer_backend[bf16-pull(1)->(3)-push(2)->(0)]"
CLOSED_PORT = "test_error_paths.py::test_link_clusters_to_closed_port"
ALLOC_BLOCKS = "test_transfer_apis.py::test_allocate_blocks_cache[fp16-blocks(0,3,5)->(7,1,2)]"
ASYNC_INDICES = (
    "test_transfer_apis.py::test_transfer_cache_async_block_indices"
    "[int8-L3x2-16x1021-layers[0:1]->[2:3]-blocks(15,9,4,0)->(3,11,0,15)]"
)
COPY_CACHE = "test_cache_apis.py::test_copy_cache[bf16-2x3x512->4x768-slot0->3-bytes250+510]"
COPY_BLOCKS = "test_cache_apis.py::test_copy_blocks[fp16-4x8x512-copy(7->0;5->4;3->2)]"
COPY_REFUSALS = "test_cache_apis.py::test_copy_refusals"
PULL_REMOVED_KEY = "test_error_paths.py::test_pull_removed_key"
PULL_CACHE_HOST = "test_transfer_apis.py::test_pull_cache_host[fp16-4x2x2048-device->host-slots(0->1,1->0)]"
PULL_CACHE_PREFIX = "test_transfer_apis.py::test_pull_cache_prefix"
SWITCH_ROLE_MID = "test_switch_role.py::test_switch_role[fp16-L5x2-4x512-layers[1:3]->[1:3]-blocks(2)->(1)-mid-layers]"

#: what each sample test above transfers or links with, as (api, role): a batch never faults an api
#: one of its tests calls for another row
CALLS: dict[str, set[tuple[str, str]]] = {
    "test_pull_cache.py::test_pull_cache": {("pull_cache", "d0"), ("link", "p0"), ("link", "d0")},
    "test_pull_blocks.py::test_pull_blocks": {
        ("pull_blocks", "d0"), ("swap_blocks", "d0"), ("link", "p0"), ("link", "d0")
    },
    "test_pull_from_cache_to_blocks.py::test_pull_from_cache_to_blocks": {
        ("pull_blocks", "d0"), ("link", "p0"), ("link", "d0")
    },
    "test_pull_blocks_xpyd.py::test_pull_blocks_1p2d": {
        ("pull_blocks", "d0"), ("pull_blocks", "d1"), ("link_clusters", "d0"), ("link_clusters", "d1")
    },
    "test_push_blocks.py::test_push_blocks": {("push_blocks", "d0"), ("link_clusters", "d0")},
    "test_push_cache.py::test_push_cache": {("push_cache", "d0"), ("link_clusters", "d0")},
    "test_switch_role.py::test_switch_role": {
        ("pull_blocks", "d0"), ("push_blocks", "d0"), ("link_clusters", "d0"), ("link_clusters", "p0")
    },
    "test_transfer_cache_async.py::test_transfer_cache_async": {
        ("transfer_cache_async", "p0"), ("link_clusters", "p0")
    },
    "test_transfer_cache_async.py::test_transfer_cache_async_reports_a_failed_layer": {
        ("transfer_cache_async", "p0"), ("link_clusters", "p0")
    },
    "test_hixl_transfer_backend.py::test_hixl_transfer_backend": {
        ("pull_blocks", "p0"), ("push_blocks", "d0"), ("link_clusters", "p0"), ("link_clusters", "d0")
    },
    "test_error_paths.py::test_link_clusters_to_closed_port": {("link_clusters", "p0")},
    "test_transfer_apis.py::test_allocate_blocks_cache": {("pull_blocks", "d0")},
    "test_transfer_apis.py::test_transfer_cache_async_block_indices": {
        ("transfer_cache_async", "p0"),
        ("link_clusters", "p0"),
    },
    "test_cache_apis.py::test_copy_cache": {("copy_cache", "p0"), ("copy_cache", "d0")},
    "test_cache_apis.py::test_copy_blocks": {("copy_blocks", "p0"), ("copy_blocks", "d0")},
    "test_cache_apis.py::test_copy_refusals": {
        ("copy_cache", "p0"), ("copy_cache", "d0"), ("copy_blocks", "p0"), ("copy_blocks", "d0")
    },
    "test_error_paths.py::test_pull_removed_key": {("pull_cache", "d0"), ("link", "p0"), ("link", "d0")},
    "test_transfer_apis.py::test_pull_cache_host": {("pull_cache", "d0"), ("link", "p0"), ("link", "d0")},
    "test_transfer_apis.py::test_pull_cache_prefix": {("pull_cache", "d0"), ("link", "p0"), ("link", "d0")},
}
#: kinds whose apis every test calls (teardown) or that end a process (crash): a batch of their own
ALONE = ("teardown", "crash")


@dataclass(frozen=True)
class Row:
    """One mutation: ``fault`` makes ``test`` (a sample node id) fail with text matching ``expect``."""

    fault: str
    test: str
    expect: str

    @property
    def kind(self) -> str:
        return parse_fault(self.fault).kind

    @property
    def api(self) -> str:
        api = parse_fault(self.fault).api
        assert api is not None, f"{self.fault}: every row names its api"
        return api

    @property
    def role(self) -> str:
        role = parse_fault(self.fault).role
        assert role is not None, f"{self.fault}: every row names its role"
        return role

    @property
    def function(self) -> str:
        return self.test.split("[")[0]

    @property
    def nodeid(self) -> str:
        return f"tests/samples/{self.test}"


MATRIX: list[Row] = [
    # flip: one byte wrong on arrival
    Row("flip@pull_cache:d0", PULL_CACHE, mismatch("d0", "cache after pull_cache")),
    Row("flip@pull_blocks:d0", PULL_BLOCKS, mismatch("d0", "cache after pull_blocks")),
    Row("flip@pull_blocks:d0", CACHE_TO_BLOCKS, mismatch("d0", "blocks after pull_blocks from a cache")),
    Row("flip@pull_blocks:d0", XPYD, mismatch("d0", "cache after pull_blocks from p0")),
    Row("flip@pull_blocks:d0", SWITCH_ROLE, mismatch("d0", "cache after pull_blocks")),
    Row("flip@pull_blocks:p0", HIXL, mismatch("p0", "cache after pull_blocks and d's push_blocks")),
    Row("flip@push_blocks:d0", PUSH_BLOCKS, mismatch("p0", "cache after push_blocks")),
    Row("flip@push_blocks:d0", SWITCH_ROLE, mismatch("p0", "cache after push_blocks")),
    Row("flip@push_blocks:d0", HIXL, mismatch("p0", "cache after pull_blocks and d's push_blocks")),
    Row("flip@push_cache:d0", PUSH_CACHE, mismatch("p0", "cache after push_cache")),
    Row("flip@transfer_cache_async:p0", ASYNC, mismatch("d0", "cache after transfer_cache_async")),
    Row("flip@transfer_cache_async:p0", ASYNC_KNOWN_ISSUE, mismatch("d0", "cache after transfer_cache_async")),
    Row("flip@swap_blocks:d0", PULL_BLOCKS, mismatch("d0", "host cache after swap_blocks out")),
    Row("flip@copy_cache:p0", COPY_CACHE, mismatch("p0", "destination cache after copy_cache")),
    Row("flip@copy_blocks:p0", COPY_BLOCKS, mismatch("p0", "blocks cache after copy_blocks")),
    # stall: the transfer never completes
    Row("stall@pull_cache:d0", PULL_CACHE, status("pull_cache", "LLM_TIMEOUT")),
    Row("stall@pull_blocks:d0", PULL_BLOCKS, status("pull_blocks", "LLM_TIMEOUT")),
    Row("stall@push_blocks:d0", PUSH_BLOCKS, status("push_blocks", "LLM_TIMEOUT")),
    Row("stall@push_cache:d0", PUSH_CACHE, status("push_cache", "LLM_TIMEOUT")),
    *(
        Row(
            "stall@transfer_cache_async:p0",
            test,
            r"transfer_cache_async results \[<LLMStatusCode\.LLM_TIMEOUT: \d+>\], expected \[LLMStatusCode\.LLM_SUCCESS\]",
        )
        for test in (ASYNC, ASYNC_KNOWN_ISSUE)
    ),
    # linkfail
    Row("linkfail@link:d0", PULL_CACHE, status("link", "LLM_LINK_FAILED")),
    Row("linkfail@link_clusters:d0", PUSH_BLOCKS, r"link_clusters to p0 failed: LLMStatusCode\.LLM_LINK_FAILED"),
    Row("linkfail@link_clusters:p0", ASYNC_KNOWN_ISSUE, r"link_clusters to d0 failed: LLMStatusCode\.LLM_LINK_FAILED"),
    # crash (every api: tests/harness/test_reliability.py); here one, against a sample
    Row("crash@pull_blocks:d0", PULL_BLOCKS, r"peer d0 died at step 'pull_blocks': its process \(pid \d+\) exited"),
    Row(
        "crash@register_blocks_cache:d0",
        ASYNC_KNOWN_ISSUE,
        r"peer d0 died at step 'register_blocks_cache': its process \(pid \d+\) exited",
    ),
    # misplace: a block or batch slot lands one off
    Row("misplace@pull_cache:d0", PULL_CACHE_MOVED, mismatch("d0", "cache after pull_cache")),
    Row("misplace@pull_blocks:d0", PULL_BLOCKS_MANY, mismatch("d0", "cache after pull_blocks") + ".*" + MISPLACED),
    Row("misplace@pull_blocks:d0", CACHE_TO_BLOCKS, mismatch("d0", "blocks after pull_blocks from a cache")),
    Row("misplace@pull_blocks:d0", ALLOC_BLOCKS, mismatch("d0", "allocated blocks after pull_blocks")),
    Row("misplace@push_cache:d0", PUSH_CACHE, mismatch("p0", "cache after push_cache")),
    Row("misplace@push_blocks:d0", PUSH_BLOCKS_MANY, mismatch("p0", "cache after push_blocks") + ".*" + MISPLACED),
    Row("misplace@transfer_cache_async:p0", ASYNC, mismatch("d0", "cache after transfer_cache_async")),
    Row("misplace@swap_blocks:d0", PULL_BLOCKS, mismatch("d0", "host cache after swap_blocks out")),
    # drop: the last block (slot) stays behind
    Row("drop@pull_cache:d0", PULL_CACHE, mismatch("d0", "cache after pull_cache")),
    Row("drop@pull_blocks:d0", PULL_BLOCKS_MANY, mismatch("d0", "cache after pull_blocks")),
    Row("drop@pull_blocks:d0", CACHE_TO_BLOCKS, mismatch("d0", "blocks after pull_blocks from a cache")),
    Row("drop@push_cache:d0", PUSH_CACHE, mismatch("p0", "cache after push_cache")),
    Row("drop@push_blocks:d0", PUSH_BLOCKS_MANY, mismatch("p0", "cache after push_blocks")),
    Row("drop@transfer_cache_async:p0", ASYNC, mismatch("d0", "cache after transfer_cache_async")),
    Row(
        "drop@transfer_cache_async:p0",
        ASYNC_INDICES,
        mismatch("d0", "cache after transfer_cache_async with block indices"),
    ),
    Row("drop@swap_blocks:d0", PULL_BLOCKS, mismatch("d0", "host cache after swap_blocks out")),
    # partial: half of each block
    Row("partial@pull_cache:d0", PULL_CACHE, mismatch("d0", "cache after pull_cache")),
    Row("partial@pull_blocks:d0", PULL_BLOCKS_MANY, mismatch("d0", "cache after pull_blocks")),
    Row("partial@push_cache:d0", PUSH_CACHE, mismatch("p0", "cache after push_cache")),
    Row("partial@push_blocks:d0", PUSH_BLOCKS_MANY, mismatch("p0", "cache after push_blocks")),
    Row("partial@transfer_cache_async:p0", ASYNC, mismatch("d0", "cache after transfer_cache_async")),
    Row("partial@swap_blocks:d0", PULL_BLOCKS, mismatch("d0", "host cache after swap_blocks out")),
    # swaptensors: two tensors trade places
    Row("swaptensors@pull_cache:d0", PULL_CACHE, mismatch("d0", "cache after pull_cache")),
    Row("swaptensors@pull_blocks:d0", PULL_BLOCKS_MANY, mismatch("d0", "cache after pull_blocks")),
    Row("swaptensors@push_cache:d0", PUSH_CACHE, mismatch("p0", "cache after push_cache")),
    Row("swaptensors@push_blocks:d0", PUSH_BLOCKS_MANY, mismatch("p0", "cache after push_blocks")),
    Row("swaptensors@transfer_cache_async:p0", ASYNC, mismatch("d0", "cache after transfer_cache_async")),
    Row("swaptensors@swap_blocks:d0", PULL_BLOCKS, mismatch("d0", "host cache after swap_blocks out")),
    # dstlayers: the destination layer range ignored
    Row("dstlayers@pull_cache:d0", PULL_CACHE_LAYERS, mismatch("d0", "cache after pull_cache")),
    Row("dstlayers@pull_blocks:d0", PULL_BLOCKS_LAYERS, mismatch("d0", "cache after pull_blocks")),
    Row("dstlayers@push_cache:d0", PUSH_CACHE_LAYERS, mismatch("p0", "cache after push_cache")),
    Row("dstlayers@push_blocks:d0", SWITCH_ROLE_LAYERS, mismatch("p0", "cache after push_blocks")),
    Row(
        "dstlayers@transfer_cache_async:p0",
        ASYNC_LINK_LOST,
        mismatch("d0", "cache after transfer_cache_async lost its link at layer 2"),
    ),
    # mapping: swap_blocks ignores the destination block
    Row("mapping@swap_blocks:d0", PULL_BLOCKS, mismatch("d0", "host cache after swap_blocks out")),
    # batch: the batch index argument ignored
    Row("batch@pull_cache:d0", PULL_CACHE_MOVED, mismatch("d0", "cache after pull_cache")),
    Row("batch@push_cache:d0", PUSH_CACHE, mismatch("p0", "cache after push_cache")),
    # lie: a failure reported as LLM_SUCCESS
    Row(
        "lie@transfer_cache_async:p0",
        ASYNC_LINK_LOST,
        r"transfer_cache_async results \[<LLMStatusCode\.LLM_SUCCESS: \d+>\] after layer 2 lost its link",
    ),
    Row(
        "lie@transfer_cache_async:p0",
        ASYNC_REFUSED,
        r"transfer_cache_async results \[<LLMStatusCode\.LLM_SUCCESS: \d+>\], "
        r"expected \[LLMStatusCode\.LLM_PARAM_INVALID\]",
    ),
    Row(
        "lie@link_clusters:p0",
        CLOSED_PORT,
        r"link_clusters to a closed port returned LLMStatusCode\.LLM_SUCCESS, expected LLMStatusCode\.LLM_LINK_FAILED",
    ),
    # nextblock: the right bytes, and the first block (slot) again in a block the call does not write
    Row("nextblock@pull_cache:d0", PULL_CACHE, mismatch("d0", "cache after pull_cache")),
    Row("nextblock@pull_blocks:d0", PULL_BLOCKS, mismatch("d0", "cache after pull_blocks")),
    Row("nextblock@push_cache:d0", PUSH_CACHE, mismatch("p0", "cache after push_cache")),
    Row("nextblock@push_blocks:d0", PUSH_BLOCKS, mismatch("p0", "cache after push_blocks")),
    Row(
        "nextblock@transfer_cache_async:p0",
        ASYNC_INDICES,
        mismatch("d0", "cache after transfer_cache_async with block indices"),
    ),
    # overrun: the right bytes, and 16 more past a block's end
    Row("overrun@pull_cache:d0", PULL_CACHE_MOVED, mismatch("d0", "cache after pull_cache")),
    Row("overrun@pull_blocks:d0", PULL_BLOCKS_MANY, mismatch("d0", "cache after pull_blocks")),
    Row("overrun@push_cache:d0", PUSH_CACHE, mismatch("p0", "cache after push_cache")),
    Row("overrun@push_blocks:d0", PUSH_BLOCKS_MANY, mismatch("p0", "cache after push_blocks")),
    Row(
        "overrun@transfer_cache_async:p0",
        ASYNC_INDICES,
        mismatch("d0", "cache after transfer_cache_async with block indices"),
    ),
    # nextlayer: the right layers, and the first source tensor again in a layer outside the range
    Row("nextlayer@pull_cache:d0", PULL_CACHE_LAYERS, mismatch("d0", "cache after pull_cache")),
    Row("nextlayer@pull_blocks:d0", PULL_BLOCKS_LAYERS, mismatch("d0", "cache after pull_blocks")),
    Row("nextlayer@push_cache:d0", PUSH_CACHE_LAYERS, mismatch("p0", "cache after push_cache")),
    Row("nextlayer@push_blocks:d0", SWITCH_ROLE_MID, mismatch("p0", "cache after push_blocks")),
    # source: the right bytes, and 16 bytes of the source cache changed
    Row("source@pull_cache:d0", PULL_CACHE, mismatch("p0", "source cache after pull_cache")),
    Row("source@pull_blocks:d0", PULL_BLOCKS, mismatch("p0", "source cache after pull_blocks")),
    Row("source@push_cache:d0", PUSH_CACHE, mismatch("d0", "source cache after push_cache")),
    Row("source@push_blocks:d0", PUSH_BLOCKS, mismatch("d0", "source cache after push_blocks")),
    Row("source@transfer_cache_async:p0", ASYNC, mismatch("p0", "source cache after transfer_cache_async")),
    Row("source@pull_cache:d0", PULL_REMOVED_KEY, mismatch("p0", "source cache after d's pulls")),
    Row(  # the source's slot 0 changed by the first pull of the prefix key shows in d's second pull of it
        "source@pull_cache:d0",
        PULL_CACHE_PREFIX,
        mismatch("d0", "cache after pulling a prefix key twice and a req key"),
    ),
    # refused: a refused call still writes 16 bytes where it would have
    Row("refused@pull_cache:d0", PULL_CACHE, mismatch("d0", "cache after a refused pull_cache")),
    Row(
        "refused@pull_cache:d0",
        PULL_REMOVED_KEY,
        mismatch("d0", "cache after a refused pull_cache of a removed key"),
    ),
    Row(
        "refused@pull_cache:d0",
        PULL_CACHE_HOST,
        mismatch("d0", "host cache after a refused host -> host pull_cache"),
    ),
    Row("refused@pull_cache:d0", PULL_CACHE_PREFIX, mismatch("d0", "cache after refused pulls")),
    Row("refused@transfer_cache_async:p0", ASYNC_REFUSED, mismatch("d0", "cache after transfer_cache_async")),
    Row("refused@pull_blocks:d0", CACHE_TO_BLOCKS, mismatch("d0", "blocks after a refused second pull_blocks")),
    # (copy_cache(blocks, cache) names the blocks cache, checked first; copy_blocks(cache, ...) the other)
    Row("refused@copy_cache:p0", COPY_REFUSALS, mismatch("p0", "blocks cache after refusals")),
    Row("refused@copy_blocks:p0", COPY_REFUSALS, mismatch("p0", "cache after refusals")),
    # relinkrace: the known upstream relink race on every link the test may take (a lasting lost link)
    Row("relinkrace=3@link:d0", PULL_BLOCKS_RELINK, status("pull_blocks", "LLM_NOT_YET_LINK")),
    # teardown: unregister or finalize fails
    Row(
        "teardown@unregister_cache:d0",
        PUSH_BLOCKS,
        r"d0 failed at step 'unregister_cache': \S*LLMException: " + status("unregister_cache", "LLM_FAILED"),
    ),
    Row(  # registered with register_cache: the default run's crash at register_blocks_cache spares it
        "teardown@unregister_cache:d0",
        PUSH_CACHE,
        r"d0 failed at step 'unregister_cache': \S*LLMException: " + status("unregister_cache", "LLM_FAILED"),
    ),
    Row(
        "teardown@finalize:d0",
        PUSH_BLOCKS,
        r"d0 failed at step 'finalize': \S*LLMException: " + status("finalize", "LLM_FAILED"),
    ),
]

#: (kind, api) the sim can inject that the matrix leaves out, and why ("*": every api of the kind)
NOT_APPLICABLE: dict[tuple[str, str], str] = {
    ("crash", "*"): "a crash at every api, on both roles: tests/harness/test_reliability.py",
    ("slow", "*"): "the right bytes, only slower: kvtest compare's bandwidth gate catches it "
    "(tests/harness/test_compare.py::test_a_real_slowdown_is_caught)",
}
#: sample files without a row, and why
FILES_WITHOUT_ROWS = {
    "test_bandwidth_sweep.py": "bench only (-m bench); its transfers and checks are push_blocks and "
    "pull_blocks through the same Node.check as the rows above",
}
#: the default run (the whole matrix runs with KVTEST_HARNESS_FULL=1): one row of each fault kind, as
#: (fault, test) of a row in MATRIX, each on a test of its own, in ONE pytest run where each fault acts
#: only in its own row's test (KVTEST_SIM_FAULT_SCOPE), plus one unfaulted run of the same cases (the
#: control). The known-issue case stands for crash: its run is the last (a crash ends the run).
DEFAULT: list[tuple[str, str]] = [
    ("flip@copy_cache:p0", COPY_CACHE),
    ("stall@transfer_cache_async:p0", ASYNC),
    ("linkfail@link_clusters:d0", PUSH_BLOCKS),
    ("misplace@pull_blocks:d0", ALLOC_BLOCKS),
    ("drop@pull_blocks:d0", CACHE_TO_BLOCKS),
    ("partial@pull_blocks:d0", PULL_BLOCKS_MANY),
    ("swaptensors@pull_cache:d0", PULL_CACHE),
    ("dstlayers@pull_cache:d0", PULL_CACHE_LAYERS),
    ("mapping@swap_blocks:d0", PULL_BLOCKS),
    ("batch@pull_cache:d0", PULL_CACHE_MOVED),
    ("lie@transfer_cache_async:p0", ASYNC_LINK_LOST),
    ("nextblock@transfer_cache_async:p0", ASYNC_INDICES),
    ("overrun@push_blocks:d0", PUSH_BLOCKS_MANY),
    ("nextlayer@pull_blocks:d0", PULL_BLOCKS_LAYERS),
    ("source@pull_cache:d0", PULL_CACHE_PREFIX),
    ("refused@pull_cache:d0", PULL_REMOVED_KEY),
    ("teardown@unregister_cache:d0", PUSH_CACHE),
    ("relinkrace=3@link:d0", PULL_BLOCKS_RELINK),
    ("crash@register_blocks_cache:d0", ASYNC_KNOWN_ISSUE),
]


def _conflicts(a: Row, b: Row) -> bool:
    """True when ``a``'s fault would touch ``b``'s test (or the other way round)."""
    if a.fault == b.fault:
        return False
    return (a.api, a.role) in CALLS[b.function] or (b.api, b.role) in CALLS[a.function]


def batches(rows: list[Row]) -> list[list[Row]]:
    """Rows packed into as few runs as possible: one kind per run, no row's fault touching another's
    test, and each sample test at most once per run."""
    packed: list[list[Row]] = []
    for row in rows:
        home = None
        if row.kind not in ALONE:
            home = next(
                (
                    batch
                    for batch in packed
                    if batch[0].kind == row.kind
                    and all(not _conflicts(row, other) and other.test != row.test for other in batch)
                ),
                None,
            )
        elif packed and packed[-1][0].fault == row.fault:
            home = packed[-1]
        if home is None:
            packed.append([row])
        else:
            home.append(row)
    return packed


def default_rows() -> list[Row]:
    """``DEFAULT`` as MATRIX rows, in the order their tests run (the crash's last)."""
    by_key = {(row.fault, row.test): row for row in MATRIX}
    rows = sorted((by_key[key] for key in DEFAULT), key=lambda row: (row.kind == "crash", row.nodeid))
    return rows


def _batch_param(batch: list[Row]) -> object:
    name = ",".join(sorted({row.fault for row in batch}))
    return pytest.param(batch, id=name, marks=pytest.mark.full)


def run_samples(
    nodeids: list[str], tmp_path: Path, fault: str | None, scope: dict[str, list[str]] | None = None
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One local-mode pytest run of the sample tests ``nodeids`` (in that order); returns it and its
    JUnit file. ``scope``: the tests each fault acts in (KVTEST_SIM_FAULT_SCOPE)."""
    junit = tmp_path / "j.xml"
    env = {k: v for k, v in os.environ.items() if k not in ("KVTEST_SIM_FAULT", "KVTEST_SIM_FAULT_SCOPE")}
    if fault is not None:
        env["KVTEST_SIM_FAULT"] = fault
    if scope is not None:
        env["KVTEST_SIM_FAULT_SCOPE"] = json.dumps(scope)
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly",
            "--kv-logs", str(tmp_path / "logs"), f"--junitxml={junit}", "--kv-timeout", "60", *nodeids,
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=480, env=env,
    )
    return result, junit


def junit_outcomes(path: Path) -> dict[str, tuple[str, str]]:
    """node id -> (passed | failed | error | skipped, the failure's message and report text)."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        nodeid = f"{module}.py::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "failed" if child.tag == "failure" else child.tag
                # JUnit truncates a long message attribute; the element's text has the whole report
                message = child.get("message", "") + "\n" + (child.text or "")
                break
        out[nodeid] = (outcome, message)
    return out


def _check_caught(batch: list[Row], tmp_path: Path, *, scoped: bool = False) -> None:
    faults = ",".join(sorted({row.fault for row in batch}))
    scope: dict[str, list[str]] | None = None
    if scoped:
        scope = {}
        for row in batch:
            scope.setdefault(row.fault, []).append(row.nodeid)
    nodeids = [row.nodeid for row in batch] if scoped else sorted({row.nodeid for row in batch})
    result, junit = run_samples(nodeids, tmp_path, faults, scope)
    out = result.stdout + result.stderr
    assert result.returncode == 1, f"KVTEST_SIM_FAULT={faults}: exit {result.returncode}\n{out}"
    outcomes = junit_outcomes(junit)
    for row in batch:
        outcome, message = outcomes.get(row.nodeid, ("missing", ""))
        assert outcome in ("failed", "error"), f"{row.fault} was not caught by {row.test}: {outcome}\n{out}"
        found = re.search(row.expect, message, re.S)
        assert found, (
            f"{row.fault} made {row.test} fail, but its message does not say why "
            f"(expected /{row.expect}/):\n{message}"
        )
        print(f"{row.fault} | {row.test} | {' '.join(found.group(0).split())[:240]}")


def _check_unfaulted(rows: list[Row], tmp_path: Path) -> None:
    """Every case ``rows`` use passes unfaulted (a known issue's case is its strict xfail): each
    failure above is its fault's doing."""
    nodeids = list(dict.fromkeys(row.nodeid for row in rows))
    result, junit = run_samples(nodeids, tmp_path, None)
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = junit_outcomes(junit)
    xfail = {f"tests/samples/{test}" for test in XFAIL_UNFAULTED}
    assert {k: v[0] for k, v in outcomes.items()} == {
        nodeid: "skipped" if nodeid in xfail else "passed" for nodeid in nodeids
    }
    for nodeid in xfail & set(nodeids):
        assert "known upstream issue" in outcomes[nodeid][1], outcomes[nodeid]


def test_one_row_of_each_kind_is_caught(tmp_path: Path):
    _check_caught(default_rows(), tmp_path, scoped=True)


def test_the_default_rows_cases_pass_without_faults(tmp_path: Path):
    _check_unfaulted(default_rows(), tmp_path)


@pytest.mark.parametrize("batch", [_batch_param(b) for b in batches(MATRIX)])
def test_every_mutation_is_caught(batch: list[Row], tmp_path: Path):
    _check_caught(batch, tmp_path)


@pytest.mark.full
def test_the_matrix_cases_pass_without_faults(tmp_path: Path):
    _check_unfaulted(MATRIX, tmp_path)


def test_the_default_run_takes_one_row_of_each_kind_each_on_its_own_test():
    rows = default_rows()
    kinds = [row.kind for row in rows]
    assert sorted(kinds) == sorted({row.kind for row in MATRIX}), "one row of each kind in MATRIX"
    tests = [row.test for row in rows]
    assert len(tests) == len(set(tests)), "a fault scoped to its test: one row per test"
    assert [row.kind for row in rows if row.kind == "crash"] == ["crash"] and rows[-1].kind == "crash"


# -- the table is complete ------------------------------------------------------------------------


def test_the_matrix_covers_every_kind_and_api():
    covered = {(row.kind, row.api) for row in MATRIX}
    missing = [
        f"{kind}@{api}"
        for kind, apis in KIND_APIS.items()
        for api in apis
        if (kind, api) not in covered and (kind, api) not in NOT_APPLICABLE and (kind, "*") not in NOT_APPLICABLE
    ]
    assert not missing, f"fault (kind@api) with no row in MATRIX and no reason in NOT_APPLICABLE: {missing}"
    every_api = {kind for kind, api in NOT_APPLICABLE if api == "*"}
    assert {row.kind for row in MATRIX} | every_api == set(KIND_APIS), "every kind has a row or a reason"
    apis = {api for kind, apis in KIND_APIS.items() if kind != "crash" for api in apis}
    assert apis <= {row.api for row in MATRIX}, f"apis with no row: {sorted(apis - {r.api for r in MATRIX})}"


def test_the_matrix_covers_every_sample_file():
    files = {path.name for path in SAMPLES.glob("test_*.py")}
    with_rows = {row.test.split("::")[0] for row in MATRIX}
    assert files - with_rows == set(FILES_WITHOUT_ROWS), (
        f"sample files with no row in MATRIX: {sorted(files - with_rows - set(FILES_WITHOUT_ROWS))}"
    )


def test_the_matrix_rows_are_sound():
    for row in MATRIX:
        parse_fault(row.fault)  # a known kind, an api it applies to, a role
        assert row.function in CALLS, f"{row.test}: say in CALLS what it transfers with"
        assert (row.api, row.role) in CALLS[row.function] or row.kind in ALONE, (
            f"{row.fault}: {row.test} does not call {row.api} on {row.role}"
        )
        assert re.search(r"block|tensor|layer|LLM_|died", row.expect), f"{row.fault}: the message must name the cause"


@pytest.mark.full  # (the default runs fail on a missing id themselves)
def test_sample_ids_in_the_matrix_exist():
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", "tests/samples"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    collected = set(listed.stdout.split())
    unknown = sorted({row.nodeid for row in MATRIX} - collected)
    assert not unknown, f"MATRIX names tests the sample suite does not collect: {unknown}"


def test_batches_never_fault_another_rows_test():
    for batch in batches(MATRIX):
        tests = [row.test for row in batch]
        assert len({row.kind for row in batch}) == 1
        assert len(tests) == len(set(tests))
        for row in batch:
            for other in batch:
                assert not _conflicts(row, other), (row.fault, other.fault)
