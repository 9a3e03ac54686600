"""switch_role_sample: d pulls from p, both switch roles (client <-> server), then d pushes into p.

Six barriers keep the two in step, as the sample's b1..b6:

1. both register (p: BlocksCacheKey(0, 0), d: BlocksCacheKey(1, 0)); p listens, d is a client.
2. d links to p, pulls p's src blocks into its dst blocks, and unlinks non-forced (both ends go);
   before the unlink, switch_role is refused with LLM_EXIST_LINK, as documented.
3. p switch_role(DECODER) with no options: a client, its listen port closes.
4. d switch_role(PROMPT, llm.listenIpInfo on a fresh port, re-published over kv): a server.
5. p links to d's new address.
6. d push_blocks every block of the source layers into p's destination layers, with
   tensor_num_per_layer as the case says (the sample's: 1, layers 0..2 -> 0..2). Cases whose source
   and destination ranges differ are skipped on npu: the docs support only equal ranges
   (documented limit ``push-unequal-layer-ranges``, kvtest/results/known_issues.py); the
   ``mid-layers`` case (equal ranges 1..3 of 5 layers) is what proves on npu that push_blocks honours
   its layer ranges.

Afterwards d holds p's pulled blocks, and p's destination layers hold d's (post-pull) cache, other
layers of p unchanged. Both unlink forced, unregister and finalize.
"""

from __future__ import annotations

import pytest

from kvtest.cases import LayersCase
from kvtest.known_issues import require_supported
from kvtest.patterns import LazyTensors

P, D = 0, 1

CASES = {
    "smoke": [
        # the sample's own: [3,10] fp32, 2 tensors of 1 per layer; pull (0,1)->(0,2), push layers 0..2
        LayersCase("fp32", 2, 3, 10, (0, 2), (0, 2), 1, (0, 1), (0, 2)),
        LayersCase("fp16", 6, 4, 512, (1, 3), (0, 2), 1, (3, 0), (1, 2)),
        LayersCase("bf16", 4, 5, 256, (0, 1), (1, 2), 2, (4,), (0,)),
        # interleaved into ascending; 2045-byte blocks (not a whole 64-bit word)
        LayersCase("int8", 8, 8, 2045, (0, 4), (0, 4), 2, (2, 0, 3, 1), (4, 5, 6, 7)),
        # equal ranges, neither from layer 0 nor to the last: what npu runs to prove the ranges honoured
        LayersCase("fp16", 10, 4, 512, (1, 3), (1, 3), 2, (2,), (1,), label="mid-layers"),
    ],
    "nightly": [
        LayersCase(
            "fp16",
            40,
            16,
            512 * 1024,
            (0, 20),
            (0, 20),
            2,
            tuple(range(8)),
            tuple(range(8, 16)),
            "1MiB-blocks",
        )
    ],
    "stress": [
        LayersCase(
            "bf16",
            160,
            128,
            32 * 1024,
            (0, 80),
            (0, 80),
            2,
            tuple(range(128)),
            tuple(reversed(range(128))),
            "GiB",
        )
    ],
}


def _desc(node, case: LayersCase):
    api = node.api
    return api.CacheDesc(case.num_tensors, case.shape, node.datatype(case.torch_dtype), api.Placement.DEVICE)


def _after_pull(node, case: LayersCase):
    """d's cache once it pulled p's src blocks into its dst blocks."""
    return node.expected_after_rows(case.num_tensors, case.shape, case.torch_dtype, base="d", source="p",
                                    src_rows=case.src, dst_rows=case.dst)


@pytest.mark.kv(topology="1p1d")
def test_switch_role(kv, datadist, case: LayersCase, request):
    if case.src_layers != case.dst_layers:
        # documented: push_blocks supports only equal ranges; the current C++ (and the sim) honours
        # dst_layer_index, so npu runs them only on a CANN version known to support it
        require_supported(request, "push-unequal-layer-ranges")
    tpl = case.tensors_per_layer
    if kv.role == "p":
        node = datadist(P, listen=True, local_comm_res="")
        api = node.api
        tensors = node.tensors(case.num_tensors, case.shape, case.torch_dtype, side="p")
        cache = node.register_blocks_cache(_desc(node, case), tensors, api.BlocksCacheKey(P, 0))
        kv.barrier("b1 register end")
        kv.barrier("b2 decoder unlink")
        node.forget_links_to(["d0"])  # d's non-forced unlink tore down p's end too
        node.switch_role(api.LLMRole.DECODER)  # a client now: no listen options
        assert node.listen is None
        kv.barrier("b3 prompt switched")
        kv.barrier("b4 decoder switched")
        ret, codes = node.link_clusters_to(["d0"])
        assert ret == api.LLMStatusCode.LLM_SUCCESS, f"link_clusters to d0 after switch_role: {ret} {codes}"
        kv.barrier("b5 linked")
        kv.barrier("b6 push end")
        # made one tensor at a time as the check reads it: p's own pattern, or d's pushed tensor
        pushed = _after_pull(node, case)
        mine = node.expected_lazily(case.num_tensors, case.shape, case.torch_dtype, side="p")
        moved = case.tensor_map()  # dst tensor -> the src tensor pushed into it
        expected = LazyTensors(case.num_tensors, lambda i: pushed[moved[i]] if i in moved else mine[i])
        node.check(expected, tensors, name="cache after push_blocks", tensors_per_layer=tpl)
        node.unlink_clusters(["d0"], force=True)
        node.unregister(cache)
        node.finalize()
    else:
        node = datadist(D, local_comm_res="")  # a client until it switches
        api = node.api
        tensors = node.tensors(case.num_tensors, case.shape, case.torch_dtype, side="d")
        cache = node.register_blocks_cache(_desc(node, case), tensors, api.BlocksCacheKey(D, 0))
        kv.barrier("b1 register end")
        node.must_link_clusters(["p0"])
        with node.measure("pull_blocks", case.moved_block_bytes):
            node.cm.pull_blocks(
                api.BlocksCacheKey(P, 0), cache, src_blocks=list(case.src), dst_blocks=list(case.dst)
            )
        node.check(_after_pull(node, case), tensors, name="cache after pull_blocks", tensors_per_layer=tpl)
        # documented: switch_role while a link is up raises LLM_EXIST_LINK (and changes nothing)
        kv.step("switch_role while linked")
        with pytest.raises(api.LLMException) as refused:
            node.dd.switch_role(api.LLMRole.PROMPT)
        assert refused.value.status_code == api.LLMStatusCode.LLM_EXIST_LINK, str(refused.value)
        node.unlink_clusters(["p0"])  # non-forced: ends both sides
        kv.barrier("b2 decoder unlink")
        kv.barrier("b3 prompt switched")
        node.switch_role(api.LLMRole.PROMPT, listen=True)
        kv.barrier("b4 decoder switched")
        kv.barrier("b5 linked")
        every = list(range(case.blocks))
        with node.measure("push_blocks", case.moved_bytes):
            node.cm.push_blocks(
                api.BlocksCacheKey(P, 0),
                cache,
                src_blocks=every,
                dst_blocks=every,
                src_layer_range=case.src_layer_range,
                dst_layer_range=case.dst_layer_range,
                tensor_num_per_layer=tpl,
            )
        kv.barrier("b6 push end")
        node.check(
            _after_pull(node, case), tensors, name="source cache after push_blocks", tensors_per_layer=tpl
        )
        node.unlink_clusters(["p0"], force=True)
        node.unregister(cache)
        node.finalize()
