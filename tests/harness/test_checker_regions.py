"""kvtest's own checker on known-bad input, one region at a time.

Every way a sample test asks ``Node``/``patterns`` to check bytes gets wrong bytes in exactly one
region, and must fail naming that place (role, check, tensor, layer, block, byte):

- destination blocks (what the transfer wrote), untouched blocks of the destination, untouched
  tensors and layers (outside a layer range), the source after the transfer;
- each kind of memory a check reads: device tensors (``to_device``), pool views of device memory
  (``backend.tensors_at``), host-pool views (``host_tensors_at``), host copies (a swap_blocks host
  cache, plain CPU tensors), and a check along another block dimension;
- the first and the last byte of the region (a partial 64-bit word at the end included).

The expected states are built the way the sample tests build them (``with_rows``,
``LayerRanges.tensor_map``), so a bug in that arithmetic shows here too. The leader's merge of every
phase and role is proven at the end, through real local-mode runs (pytester subprocesses): one run of
every (role, phase) of 2p2d (about 30-45 s on the shared machine), and
three runs whose only failure is a peer's, for the exit code alone; all of them in the full lane.
"""

from __future__ import annotations

import re
import textwrap
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest
import torch

from kvtest import patterns
from kvtest.backends.sim.backend import load
from kvtest.cases import LayersCase
from kvtest.node import Node, host_tensors_at
from kvtest.patterns import KVMismatch, with_rows

SEED = 1234


@pytest.fixture(scope="module")
def backend():
    return load()


def make_node(backend, me: str = "d0") -> Node:
    steps: list[str] = []
    kv = SimpleNamespace(seed=SEED, me=me, step=steps.append, publish=lambda *a: None, steps=steps)
    return Node(kv, backend, SimpleNamespace(local_host_ip="127.0.0.1"), cluster_id=2)  # type: ignore[arg-type]


def flip(actual: list[torch.Tensor], tensor_index: int, block: int, byte: int) -> None:
    """Invert byte ``byte`` of block ``block`` of ``actual[tensor_index]``, in place."""
    rows = actual[tensor_index].view(torch.uint8).reshape(actual[tensor_index].shape[0], -1)
    rows[block, byte] ^= 0xFF


def location(role_check: str, tensor: int, tpl: int, block: int, blocks: int, byte: int) -> str:
    return (
        rf"KV mismatch in {re.escape(role_check)}: tensor {tensor} \(layer {tensor // tpl}, "
        rf"tensors_per_layer={tpl}\), block {block} of {blocks} .*\n  first difference: byte {byte} of block {block}"
    )


# a pull_blocks of one layer (layer 1 of 3, 2 tensors per layer) into layer 2 of d; 1018-byte blocks
CASE = LayersCase("bf16", 6, 6, 509, (1, 2), (2, 3), src=(5, 0, 3), dst=(1, 4, 0))
TPL = CASE.tensors_per_layer


def _pulled_state(node: Node) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(d's tensors before, d's expected tensors after) as test_pull_blocks builds them."""
    before = node.expected(CASE.num_tensors, CASE.shape, CASE.torch_dtype, side="d")
    source = node.expected(CASE.num_tensors, CASE.shape, CASE.torch_dtype, side="p")
    expected = list(before)
    for dst_t, src_t in CASE.tensor_map().items():
        expected[dst_t] = with_rows(before[dst_t], source[src_t], src_rows=CASE.src, dst_rows=CASE.dst)
    return before, expected


ROW = CASE.block_bytes
# (region, tensor, block): every place d's cache must be checked after the pull
REGIONS = [
    ("destination block", 4, 1),  # layer 2, the first dst block
    ("destination block", 5, 0),  # layer 2, the last dst block listed, the cache's first block
    ("untouched block", 4, 5),  # layer 2, a block the pull does not write (the cache's last)
    ("untouched block", 5, 2),
    ("untouched tensor of another layer", 0, 1),  # layer 0: outside the destination range
    ("untouched tensor of another layer", 3, 4),  # layer 1: the source layer's index on d
]


@pytest.mark.parametrize("byte", [0, ROW - 1, ROW // 2 + 3], ids=["first", "last", "middle"])
@pytest.mark.parametrize("region, tensor, block", REGIONS, ids=[f"{r}-t{t}b{b}" for r, t, b in REGIONS])
def test_device_tensors_wrong_in_one_region_fail_naming_it(backend, region, tensor, block, byte):
    node = make_node(backend)
    _, expected = _pulled_state(node)
    actual = [backend.to_device(e) for e in expected]
    node.check(expected, actual, name="cache after pull_blocks")  # the right bytes pass
    flip(actual, tensor, block, byte)
    with pytest.raises(KVMismatch, match=location("d0 cache after pull_blocks", tensor, TPL, block, CASE.blocks,
                                                  byte)) as raised:
        node.check(expected, actual, name="cache after pull_blocks")
    assert [m.tensor_index for m in raised.value.mismatches] == [tensor]
    assert raised.value.mismatches[0].differing_total == 1
    assert not node.same(expected, actual)
    assert node.kv.steps[-1] == "check cache after pull_blocks"


@pytest.mark.parametrize("byte", [0, ROW - 1])
@pytest.mark.parametrize("tensor, block", [(2, 5), (3, 0), (0, 2)])  # the source layer's blocks, and another
def test_the_source_wrong_after_the_transfer_fails_naming_it(backend, tensor, block, byte):
    node = make_node(backend, "p0")
    source = node.expected(CASE.num_tensors, CASE.shape, CASE.torch_dtype, side="p")
    actual = [backend.to_device(s) for s in source]
    flip(actual, tensor, block, byte)
    with pytest.raises(KVMismatch, match=location("p0 source cache after pull_blocks", tensor, TPL, block,
                                                  CASE.blocks, byte)):
        node.check(source, actual, name="source cache after pull_blocks")


def test_a_block_of_the_wrong_source_tensor_is_named(backend):
    """The right block from the wrong tensor (a pair swapped): the block is named, every byte of it."""
    node = make_node(backend)
    before, expected = _pulled_state(node)
    actual = [backend.to_device(e) for e in expected]
    source = node.expected(CASE.num_tensors, CASE.shape, CASE.torch_dtype, side="p")
    actual[4][1] = source[3][5]  # d's tensor 4 took p's tensor 3's block (tensor 2 is its source)
    with pytest.raises(KVMismatch, match=location("d0 cache after pull_blocks", 4, TPL, 1, CASE.blocks, 0)) as raised:
        node.check(expected, actual, name="cache after pull_blocks")
    assert raised.value.mismatches[0].differing_blocks == (1,)


@pytest.mark.parametrize("placement", ["device pool", "host pool"])
@pytest.mark.parametrize("byte", [0, -1])
def test_pool_views_wrong_in_memory_fail_naming_the_place(backend, placement, byte):
    """A pool-allocated cache is checked through views of its memory: a byte changed in that memory
    (not in a copy) is found, for device-pool views (tensors_at) and host-pool views (host_tensors_at)."""
    node = make_node(backend)
    shape, dtype, n = [3, 1021], torch.int8, 2  # 1021-byte slots: the last word is partial
    memory = [torch.zeros(3 * 1021 + 16, dtype=torch.uint8) for _ in range(n)]
    addrs = [m.data_ptr() + 8 for m in memory]
    views = backend.tensors_at(shape, dtype, addrs) if placement == "device pool" else host_tensors_at(shape, dtype, addrs)
    contents = node.expected(n, shape, dtype, side="d")
    for view, content in zip(views, contents):
        view.copy_(content)
    node.check(contents, views, name="cache after pull_cache")
    slot, at = 2, 1020 if byte == -1 else 0
    memory[1][8 + slot * 1021 + at] ^= 0x5A
    with pytest.raises(KVMismatch, match=location("d0 cache after pull_cache", 1, 2, slot, 3, at)):
        node.check(contents, views, name="cache after pull_cache")


def test_a_host_copy_wrong_fails_naming_it(backend):
    """swap_blocks' host cache: plain host tensors (the CPU cache's memory), checked in place."""
    node = make_node(backend)
    _, expected = _pulled_state(node)
    blocks = list(range(CASE.blocks))
    shifted = [(b + 1) % CASE.blocks for b in blocks]
    host_expected = [with_rows(e, e, src_rows=blocks, dst_rows=shifted) for e in expected]
    host = [h.clone() for h in host_expected]
    node.check(host_expected, host, name="host cache after swap_blocks out")
    flip(host, 5, 0, ROW - 1)  # host block 0 holds device block 5 (the wrap-around)
    with pytest.raises(KVMismatch, match=location("d0 host cache after swap_blocks out", 5, TPL, 0, CASE.blocks,
                                                  ROW - 1)):
        node.check(host_expected, host, name="host cache after swap_blocks out")


@pytest.mark.parametrize("tpl", [1, 2, 3])
def test_the_layer_named_follows_tensors_per_layer(backend, tpl):
    node = make_node(backend)
    expected = node.expected(6, [2, 40], torch.float32, side="p")
    actual = [e.clone() for e in expected]
    flip(actual, 5, 1, 7)
    with pytest.raises(KVMismatch, match=location("d0 x", 5, tpl, 1, 2, 7)):
        node.check(expected, actual, name="x", tensors_per_layer=tpl)


@pytest.mark.parametrize("block_dim", [1, 2])
def test_a_check_along_another_block_dimension_names_that_block(block_dim):
    shape = [3, 4, 5]
    expected = patterns.pattern(shape, torch.float16, seed=SEED, tensor_index=0, side="p", block_dim=block_dim)
    actual = expected.clone()
    index = [1, 2, 3]
    actual[tuple(index)] = actual[tuple(index)] + 1
    block = index[block_dim]
    with pytest.raises(KVMismatch, match=rf"block {block} of {shape[block_dim]} \(block_dim={block_dim}"):
        patterns.check(expected, actual, name="along", tensor_index=0, block_dim=block_dim)


def test_the_last_tensor_of_a_cache_is_checked_too(backend):
    node = make_node(backend)
    expected = node.expected(4, [2, 3], torch.int8, side="p")
    actual = [e.clone() for e in expected]
    actual[3][1, 2] ^= 1
    with pytest.raises(KVMismatch, match=location("d0 all", 3, 2, 1, 2, 2)):
        node.check(expected, actual, name="all")


def test_a_missing_tensor_is_refused_not_passed(backend):
    node = make_node(backend)
    expected = node.expected(3, [2, 3], torch.int8, side="p")
    with pytest.raises(ValueError, match="2 tensors given, 3 expected"):
        node.check(expected, expected[:2], name="short")


# -- the leader's merge of every phase and role --------------------------------------------------------

ROLES = ("p0", "p1", "d0", "d1")
PHASES = ("setup", "call", "teardown")

MERGE_TESTS = textwrap.dedent(
    '''
    import pytest

    ROLES = {roles!r}
    PHASES = {phases!r}


    @pytest.fixture
    def fails_at(kv, request):
        role, phase = request.param
        if kv.me == role and phase == "setup":
            raise RuntimeError(f"{{role}} broke in setup")
        yield role, phase
        if kv.me == role and phase == "teardown":
            raise RuntimeError(f"{{role}} broke in teardown")


    @pytest.mark.kv(topology="2p2d")
    @pytest.mark.parametrize("fails_at", [(r, p) for r in ROLES for p in PHASES], indirect=True,
                             ids=[f"{{r}}-{{p}}" for r in ROLES for p in PHASES])
    def test_fails(kv, fails_at):
        role, phase = fails_at
        kv.barrier("body")
        assert not (kv.me == role and phase == "call"), f"{{role}} broke in call"


    @pytest.mark.kv(topology="2p2d")
    def test_control(kv):
        kv.barrier("body")
    '''
).format(roles=ROLES, phases=PHASES)


def _junit(path) -> dict[str, str]:
    """test name -> how it ended and the message: 'passed', 'failure: ...' or 'error: ...'."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        kids = [c for c in case if c.tag in ("failure", "error", "skipped")]
        out[case.get("name", "")] = f"{kids[0].tag}: {kids[0].get('message')}" if kids else "passed"
    return out


@pytest.mark.full
def test_a_failure_in_any_phase_of_any_role_reaches_the_leaders_verdict_and_exit_code(pytester: pytest.Pytester):
    """Local mode, 2p2d: one test per (role, phase) that fails there and only there. p0's report fails
    each of them naming the role and the phase (setup and teardown failures of a peer arrive as errors of
    that phase), the control passes, and the exit code is 1."""
    pytester.makepyfile(test_merge_phases=MERGE_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--junitxml=j.xml", timeout=600)
    verdicts = _junit(pytester.path / "j.xml")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    assert verdicts["test_control"] == "passed", verdicts
    for role in ROLES:
        for phase in PHASES:
            verdict = verdicts.get(f"test_fails[{role}-{phase}]", "not reported")
            assert verdict != "passed" and verdict != "not reported", f"{role} {phase}: {verdict}"
            if phase == "teardown":
                assert verdict.startswith("error"), f"{role} {phase}: {verdict}"
            assert f"{role} broke in {phase}" in verdict, f"{role} {phase}: the leader's verdict is {verdict!r}"
            if role != "p0" or phase == "setup":
                step = "after barrier body" if phase == "call" else phase
                assert f"{role} failed at step '{step}'" in verdict, f"{role} {phase}: {verdict!r}"


@pytest.mark.full
@pytest.mark.parametrize("role, phase", [("d1", "setup"), ("p1", "teardown"), ("d0", "call")])
def test_a_peers_failure_alone_sets_the_exit_code(pytester: pytest.Pytester, role, phase):
    """The run's only failure is a peer's (in setup, call or teardown): the leader exits 1, not 0."""
    pytester.makepyfile(test_merge_phases=MERGE_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", f"{role}-{phase}", timeout=300)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines([f"*{role} failed*{role} broke in {phase}*"])
