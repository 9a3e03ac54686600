"""The input space each API meets in a profile: which corners its cases reach.

    python benchmarks/coverage.py                 # the smoke profile
    python benchmarks/coverage.py --profile nightly

Nothing here is a list of claims: every row comes from the cases a profile generates (the sample
modules' ``CASES`` through :func:`kvtest.cases.cases_for`, split by case type as the tests' own
``parametrize_by_type`` splits them). :data:`FLOWS` says which test calls which API with which case
type and how that test reads the case (its adapter turns a case into the :class:`Inputs` the call
gets); :func:`corners` classifies those inputs. A flow's lifetime corners come from the case fields
its test body acts on (``deallocate_first``, ``after``), or, where every case of the test does the
same thing (``test_allocate_blocks_cache`` always deallocates before the peer's refused pull), from
:data:`Flow.always`, next to the flow.

``REQUIRED`` is the set of corners each API must reach in smoke; ``tests/harness/test_coverage.py``
fails when one has no smoke case. Why the corners (hicann/hixl @ 9ed283b):

- sizes: the memory pool rounds to ``MEM_SIZE_ALIGN`` 512 B (src/llm_datadist/memory/type/mem_size.h)
  and hands out 64 KiB pages (``DataCacheEngine::InitializeDeviceMemoryPool``); a block or slot whose
  bytes are not a multiple of 8 cuts a 64-bit word (an odd int8 or fp16 element count), which a copy
  done in words or a pattern written in words gets wrong first;
- lifetime: ``CacheManager::Deallocate`` (cache_mgr/cache_manager.cc) frees a blocks cache at once but
  only delays a pool cache whose ``CacheKey``s are pending: a peer may still pull them (allowed), and a
  pulled req-id key is gone (refused); ``DataCacheEngine::Unregister`` does not check links, so an
  unregister while the peer is linked succeeds and the peer's next pull is LLM_KV_CACHE_NOT_EXIST.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tests" / "samples"
if str(ROOT) not in sys.path:  # run as a script from anywhere: kvtest from this checkout
    sys.path.insert(0, str(ROOT))

from kvtest import cases as kvcases  # noqa: E402

#: the memory pool's page (kvtest.cases.POOL_PAGE) and the native size alignment
POOL_PAGE = kvcases.POOL_PAGE
MEM_SIZE_ALIGN = 512
WORD = 8
SAMPLE_DTYPES = ("fp16", "bf16", "fp32", "int8")


@dataclass(frozen=True)
class Inputs:
    """What one API call of a case gets, as the corners see it.

    ``src``/``dst``: the block (or batch slot) indices the call reads and writes, in call order;
    ``src_count``/``dst_count``: how many blocks (slots) each cache has; ``layers``: layers of the
    cache, with ``src_layers``/``dst_layers`` (start, stop) when the call takes layer ranges;
    ``unit_bytes``: bytes of one block or slot moved per tensor; ``tensor_bytes``: bytes of one
    tensor of a pool-allocated cache (None: registered memory); ``lifetime``: the lifetime orders the
    test acts out.
    """

    dtype: str
    src: tuple[int, ...] = ()
    dst: tuple[int, ...] = ()
    src_count: int = 0
    dst_count: int = 0
    layers: int = 0
    src_layers: tuple[int, int] | None = None
    dst_layers: tuple[int, int] | None = None
    unit_bytes: int = 0
    tensor_bytes: int | None = None
    lifetime: frozenset[str] = frozenset()


# -- the corners --------------------------------------------------------------------------------------

BLOCK_CORNERS = {
    "descending": "a block list of 2+ strictly descending",
    "interleaved": "a block list neither ascending nor descending",
    "gaps": "a block list whose blocks are not contiguous",
    "single": "one block",
    "first": "the cache's first block",
    "last": "the cache's last block",
    "orders differ": "src and dst lists of different orders (the i-th smallest src is not sent to the "
    "i-th smallest dst)",
}
LAYER_CORNERS = {
    "layers from >0": "a layer range starting above layer 0",
    "layers to last": "a layer range ending at the last layer",
    "one layer": "a range of one layer",
    "ranges differ": "source and destination ranges differ",
}
SIZE_CORNERS = {
    "not 512-multiple": f"bytes per block/slot not a multiple of {MEM_SIZE_ALIGN} (MEM_SIZE_ALIGN)",
    "not word-multiple": f"bytes per block/slot not a multiple of {WORD} (a cut 64-bit word)",
    "not page-multiple": f"a pool tensor not a multiple of the {POOL_PAGE // 1024} KiB pool page",
}
LIFETIME_CORNERS = {
    "deallocate, peer pulls pending key": "deallocate_cache while the peer still holds a CacheKey; the "
    "pull succeeds (allowed)",
    "consumed key pulled again": "a req-id CacheKey pulled a second time: LLM_KV_CACHE_NOT_EXIST (refused)",
    "key removed, peer pulls": "remove_cache_key, then the peer pulls that key: LLM_KV_CACHE_NOT_EXIST "
    "(refused)",
    "deallocate blocks, peer pulls": "deallocate_blocks_cache, then the peer pulls its BlocksCacheKey: "
    "LLM_KV_CACHE_NOT_EXIST (refused)",
    "unregister while linked, peer pulls": "unregister_cache while the peer is linked; its next pull is "
    "LLM_KV_CACHE_NOT_EXIST (refused)",
    "relink, pull again": "unlink and link again while the peer keeps its cache, then pull (allowed)",
}
DTYPE_CORNERS = {f"dtype {d}": f"a {d} case" for d in SAMPLE_DTYPES}
ALL_CORNERS = {**BLOCK_CORNERS, **LAYER_CORNERS, **SIZE_CORNERS, **LIFETIME_CORNERS, **DTYPE_CORNERS}


def _ascending(values: Sequence[int]) -> bool:
    return all(a < b for a, b in zip(values, values[1:]))


def _descending(values: Sequence[int]) -> bool:
    return all(a > b for a, b in zip(values, values[1:]))


def _ranks(values: Sequence[int]) -> list[int]:
    return sorted(range(len(values)), key=lambda i: values[i])


def block_corners(src: Sequence[int], dst: Sequence[int], src_count: int, dst_count: int) -> set[str]:
    found: set[str] = set()
    lists = [(src, src_count), (dst, dst_count)]
    for values, count in lists:
        if not values:
            continue
        if len(values) >= 2 and _descending(values):
            found.add("descending")
        if len(values) >= 3 and not _ascending(values) and not _descending(values):
            found.add("interleaved")
        if len(values) >= 2 and max(values) - min(values) + 1 > len(set(values)):
            found.add("gaps")
        if len(values) == 1:
            found.add("single")
        if 0 in values:
            found.add("first")
        if count and count - 1 in values:
            found.add("last")
    if src and dst and len(src) == len(dst) and _ranks(src) != _ranks(dst):
        found.add("orders differ")
    return found


def layer_corners(layers: int, src: tuple[int, int] | None, dst: tuple[int, int] | None) -> set[str]:
    found: set[str] = set()
    for rng in (r for r in (src, dst) if r is not None):
        start, stop = rng
        if start > 0:
            found.add("layers from >0")
        if stop == layers:
            found.add("layers to last")
        if stop - start == 1:
            found.add("one layer")
    if src is not None and dst is not None and src != dst:
        found.add("ranges differ")
    return found


def size_corners(unit_bytes: int, tensor_bytes: int | None) -> set[str]:
    found: set[str] = set()
    if unit_bytes % MEM_SIZE_ALIGN:
        found.add("not 512-multiple")
    if unit_bytes % WORD:
        found.add("not word-multiple")
    if tensor_bytes is not None and tensor_bytes % POOL_PAGE:
        found.add("not page-multiple")
    return found


def corners(inputs: Inputs) -> set[str]:
    """Every corner one call's inputs reach."""
    found = block_corners(inputs.src, inputs.dst, inputs.src_count, inputs.dst_count)
    if inputs.src_layers is not None or inputs.dst_layers is not None:
        found |= layer_corners(inputs.layers, inputs.src_layers, inputs.dst_layers)
    found |= size_corners(inputs.unit_bytes, inputs.tensor_bytes)
    found |= set(inputs.lifetime)
    found.add(f"dtype {inputs.dtype}")
    return found


# -- which test calls which API with which case, read as the test reads it ------------------------------


def _itemsize(dtype: str) -> int:
    return kvcases.DTYPES[dtype].itemsize


def _every(n: int) -> tuple[int, ...]:
    return tuple(range(n))


def _pull_blocks(c: Any) -> Inputs:
    layers = getattr(c, "layers", None)
    src_l, dst_l = layers if layers is not None else (None, None)
    names = {"unregister": "unregister while linked, peer pulls", "relink": "relink, pull again"}
    lifetime = frozenset(names[step] for step in getattr(c, "after", ()))
    return Inputs(c.dtype, c.src, c.dst, c.blocks, c.blocks, c.num_tensors // 2, src_l, dst_l, c.block_bytes,
                  lifetime=lifetime)


def _swap_blocks(c: Any) -> Inputs:
    blocks = _every(c.blocks)
    shifted = tuple((b + 1) % c.blocks for b in blocks)
    return Inputs(c.dtype, blocks, shifted, c.blocks, c.blocks, unit_bytes=c.block_bytes)


def _blocks(c: Any) -> Inputs:
    return Inputs(c.dtype, c.src, c.dst, c.blocks, c.blocks, unit_bytes=c.block_bytes)


def _allocated_blocks(c: Any) -> Inputs:
    return Inputs(c.dtype, c.src, c.dst, c.blocks, c.blocks, unit_bytes=c.block_bytes,
                  tensor_bytes=c.blocks * c.block_bytes)


def _pull_cache(c: Any) -> Inputs:
    src_l, dst_l = c.layers if c.layers is not None else (None, None)
    lifetime = {"consumed key pulled again"} if c.layers is None else set()
    if getattr(c, "deallocate_first", False):
        lifetime.add("deallocate, peer pulls pending key")
    if getattr(c, "unpulled", ()):
        lifetime.add("key removed, peer pulls")
    return Inputs(c.dtype, tuple(s for s, _ in c.pulls), tuple(i for _, i in c.pulls), c.batch, c.batch,
                  c.num_tensors // 2, src_l, dst_l, c.row_bytes, c.batch * c.row_bytes, frozenset(lifetime))


def _slot_layers(c: Any) -> Inputs:
    return Inputs(c.dtype, (c.src_slot,), (c.dst_slot,), c.batch, c.dst_batch, c.num_tensors // 2,
                  c.src_layers, c.dst_layers, c.row_bytes)


def _raw_addrs(c: Any) -> Inputs:  # TransferConfig takes a source range only
    return Inputs(c.dtype, (c.src_slot,), (c.dst_slot,), c.batch, c.dst_batch, c.num_tensors // 2,
                  c.src_layers, None, c.row_bytes)


def _host_pull(c: Any) -> Inputs:
    return Inputs(c.dtype, tuple(s for s, _ in c.pulls), tuple(i for _, i in c.pulls), c.batch, c.batch,
                  unit_bytes=c.row_bytes, tensor_bytes=c.batch * c.row_bytes)


def _cache_to_blocks(c: Any) -> Inputs:
    unit = c.block_row * _itemsize(c.dtype)
    return Inputs(c.dtype, (c.slot,), c.dst, c.slots, c.blocks, unit_bytes=unit,
                  tensor_bytes=c.slots * unit * len(c.dst))


def _push_cache(c: Any) -> Inputs:
    rng = c.layers
    return Inputs(c.dtype, (c.src_batch,), (c.dst_batch,), c.batch, c.batch, c.num_tensors // 2, rng, rng,
                  c.row_bytes)


def _every_block_layers(c: Any) -> Inputs:
    every = _every(c.blocks)
    return Inputs(c.dtype, every, every, c.blocks, c.blocks, c.layers, c.src_layers, c.dst_layers, c.block_bytes)


def _block_indices(c: Any) -> Inputs:
    return Inputs(c.dtype, c.src, c.dst, c.blocks, c.blocks, c.layers, c.src_layers, c.dst_layers, c.block_bytes)


def _to_blocks(c: Any) -> Inputs:
    return Inputs(c.dtype, (c.slot,), c.dst, c.batch, c.blocks, c.num_tensors // 2, c.src_layers, c.dst_layers,
                  c.block_bytes)


def _switch_pull(c: Any) -> Inputs:
    return Inputs(c.dtype, c.src, c.dst, c.blocks, c.blocks, unit_bytes=c.block_bytes)


def _copy_cache(c: Any) -> Inputs:
    return Inputs(c.dtype, (c.src_index,), (c.dst_index,), c.src_batch, c.dst_batch, unit_bytes=c.copy_bytes,
                  tensor_bytes=c.src_batch * c.src_stride)


def _copy_blocks(c: Any) -> Inputs:  # the sources once each, as the {src: [dst, ...]} the call takes
    return Inputs(c.dtype, tuple(s for s, _ in c.copies), tuple(c.dst_rows), c.blocks, c.blocks,
                  unit_bytes=c.row_bytes)


@dataclass(frozen=True)
class Flow:
    """``test`` of ``tests/samples/<file>`` calls ``api`` with each case of type ``kind`` (``None``: the
    module's only case type) as ``adapter`` reads it; ``always``: lifetime corners every case acts out."""

    api: str
    file: str
    test: str
    kind: str | None
    adapter: Callable[[Any], Inputs]
    always: frozenset[str] = field(default_factory=frozenset)


FLOWS = [
    Flow("pull_cache", "test_pull_cache.py", "test_pull_cache", None, _pull_cache),
    Flow("pull_cache", "test_transfer_apis.py", "test_pull_cache_by_id", "SlotLayersCase", _slot_layers),
    Flow("pull_cache", "test_transfer_apis.py", "test_pull_cache_host", "HostPullCase", _host_pull),
    Flow("pull_blocks", "test_pull_blocks.py", "test_pull_blocks", None, _pull_blocks),
    Flow("pull_blocks", "test_transfer_apis.py", "test_mix_role", "MixRoleCase", _blocks),
    Flow("cache-to-blocks", "test_pull_from_cache_to_blocks.py", "test_pull_from_cache_to_blocks", None,
         _cache_to_blocks, frozenset({"consumed key pulled again"})),
    Flow("push_blocks", "test_push_blocks.py", "test_push_blocks", None, _blocks),
    Flow("push_blocks", "test_transfer_apis.py", "test_mix_role", "MixRoleCase", _blocks),
    Flow("push_cache", "test_push_cache.py", "test_push_cache", None, _push_cache),
    Flow("transfer_cache_async blocks", "test_transfer_cache_async.py", "test_transfer_cache_async", None,
         _every_block_layers),
    Flow("transfer_cache_async block indices", "test_transfer_apis.py", "test_transfer_cache_async_block_indices",
         "LayersCase", _block_indices),
    Flow("transfer_cache_async to blocks", "test_transfer_apis.py", "test_transfer_cache_async_to_blocks",
         "ToBlocksCase", _to_blocks),
    Flow("transfer_cache_async by id", "test_transfer_apis.py", "test_transfer_cache_async_by_id",
         "SlotLayersCase", _slot_layers),
    Flow("transfer_cache_async raw addrs", "test_transfer_apis.py", "test_transfer_cache_async_raw_addrs",
         "SlotLayersCase", _raw_addrs),
    Flow("swap_blocks", "test_pull_blocks.py", "test_pull_blocks", None, _swap_blocks),
    Flow("copy_cache", "test_cache_apis.py", "test_copy_cache", "CopyCacheCase", _copy_cache),
    Flow("copy_blocks", "test_cache_apis.py", "test_copy_blocks", "CopyBlocksCase", _copy_blocks),
    Flow("allocate/deallocate", "test_transfer_apis.py", "test_allocate_blocks_cache", "BlocksCase",
         _allocated_blocks, frozenset({"deallocate blocks, peer pulls"})),
    Flow("allocate/deallocate", "test_pull_cache.py", "test_pull_cache", None, _pull_cache),
    Flow("allocate/deallocate", "test_cache_apis.py", "test_copy_cache",
         "CopyCacheCase", _copy_cache),
    Flow("register/unregister", "test_pull_blocks.py", "test_pull_blocks", None, _pull_blocks),
    Flow("switch_role", "test_switch_role.py", "test_switch_role", None, _switch_pull),
    Flow("switch_role", "test_switch_role.py", "test_switch_role", None, _every_block_layers),
    Flow("xPyD", "test_pull_blocks_xpyd.py", "test_pull_blocks_2p2d", None, _blocks),
]

#: rows about a cache's lifetime: only lifetime corners (and pool page sizes) are counted there
LIFETIME_APIS = {"allocate/deallocate", "register/unregister"}
BLOCKS = set(BLOCK_CORNERS)
LAYERS = set(LAYER_CORNERS)
DTYPES = set(DTYPE_CORNERS)
BYTES = {"not 512-multiple", "not word-multiple"}
SLOTS = {"first", "last", "orders differ"}

#: the corners each API must reach in the smoke profile
REQUIRED: dict[str, set[str]] = {
    "pull_cache": SLOTS | LAYERS | BYTES | DTYPES | {"not page-multiple", "consumed key pulled again",
                                                     "deallocate, peer pulls pending key",
                                                     "key removed, peer pulls"},
    "pull_blocks": BLOCKS | LAYERS | BYTES | DTYPES | {"unregister while linked, peer pulls",
                                                      "relink, pull again"},
    "cache-to-blocks": BLOCKS - {"orders differ"} | BYTES | DTYPES | {"not page-multiple",
                                                                      "consumed key pulled again"},
    "push_blocks": BLOCKS | BYTES | DTYPES,
    "push_cache": {"first", "last"} | (LAYERS - {"ranges differ"}) | BYTES | DTYPES,
    "transfer_cache_async blocks": LAYERS | BYTES | DTYPES,
    "transfer_cache_async block indices": BLOCKS | LAYERS | BYTES,
    # one destination list: descending and interleaved exclude each other; interleaved is required
    "transfer_cache_async to blocks": BLOCKS - {"orders differ", "descending"} | LAYERS | BYTES,
    "transfer_cache_async by id": {"first", "last"} | LAYERS | BYTES,
    # a source range only, and it starts at 0 (above 0 is the known upstream issue
    # transfer-layers-absolute-dst-index); it ends at the last layer in nightly (the smoke case has one)
    "transfer_cache_async raw addrs": {"first", "last", "one layer"} | BYTES,
    "swap_blocks": {"first", "last", "orders differ"} | BYTES | DTYPES,
    "copy_cache": {"first", "last"} | BYTES | {"not page-multiple"},
    "copy_blocks": BLOCKS | BYTES,
    "allocate/deallocate": {"deallocate blocks, peer pulls", "deallocate, peer pulls pending key",
                            "not page-multiple"},
    "register/unregister": {"unregister while linked, peer pulls", "relink, pull again"},
    "switch_role": BLOCKS | LAYERS | BYTES | DTYPES,
    # one case costs three tests (2p1d, 1p2d, 2p2d): a single block is pull_blocks' corner
    "xPyD": BLOCKS - {"single"} | BYTES,
}


def load_sample(file: str) -> ModuleType:
    """A sample module, loaded from its path (tests/samples is not a package)."""
    path = SAMPLES / file
    spec = importlib.util.spec_from_file_location(f"kvtest_coverage_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def flow_cases(flow: Flow, module: ModuleType, profile: str) -> list[Any]:
    """The cases ``flow.test`` is parametrized with in ``profile`` (none if the test is gone)."""
    if not hasattr(module, flow.test):
        return []
    selected = kvcases.cases_for(module.CASES, profile)
    if flow.kind is None:
        return selected
    return [c for c in selected if type(c).__name__ == flow.kind]


Table = dict[str, dict[str, list[str]]]


def table(profile: str = "smoke", modules: dict[str, ModuleType] | None = None) -> Table:
    """API -> corner -> the test ids (``test[case]``) that reach it."""
    modules = {} if modules is None else modules
    out: Table = {}
    for flow in FLOWS:
        module = modules.get(flow.file)
        if module is None:
            module = modules[flow.file] = load_sample(flow.file)
        row = out.setdefault(flow.api, {})
        for case in flow_cases(flow, module, profile):
            inputs = flow.adapter(case)
            reached = corners(inputs) | set(flow.always)
            if flow.api in LIFETIME_APIS:  # what these rows are about: lifetimes and pool sizes
                reached &= set(LIFETIME_CORNERS) | {"not page-multiple"}
            for corner in reached:
                row.setdefault(corner, []).append(f"{flow.test}[{case}]")
    return out


def missing(found: Table, required: dict[str, set[str]] | None = None) -> dict[str, list[str]]:
    """API -> required corners no case reaches."""
    required = REQUIRED if required is None else required
    gaps = {api: sorted(c for c in want if not found.get(api, {}).get(c)) for api, want in required.items()}
    return {api: gaps_ for api, gaps_ in gaps.items() if gaps_}


def render(found: Table, required: dict[str, set[str]] | None = None) -> str:
    """The table: one line per API, one column per corner; ``x`` reached, ``-`` required and missing,
    ``.`` not required and not reached, ``o`` reached beyond what is required."""
    required = REQUIRED if required is None else required
    names = list(ALL_CORNERS)
    width = max(map(len, found)) + 2
    lines = [f"{'':{width}}" + " ".join(f"{i:>2}" for i in range(len(names)))]
    for api in found:
        want = required.get(api, set())
        marks = []
        for name in names:
            hit = bool(found[api].get(name))
            marks.append(" x" if hit and name in want else " -" if name in want else " o" if hit else " .")
        lines.append(f"{api:{width}}" + " ".join(m for m in marks))
    lines.append("")
    lines += [f"{i:>2} {name}: {ALL_CORNERS[name]}" for i, name in enumerate(names)]
    lines.append("x reached and required, - required and MISSING, o reached (not required), . neither")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke", choices=["smoke", "nightly", "stress"])
    parser.add_argument("--cases", metavar="API", help="list the test ids that reach each corner of API")
    args = parser.parse_args(list(argv) if argv is not None else None)
    found = table(args.profile)
    print(f"input-space coverage, profile {args.profile}")
    print(render(found))
    if args.cases:
        for corner, ids in sorted(found.get(args.cases, {}).items()):
            print(f"{corner}: {', '.join(ids)}")
    gaps = missing(found)
    for api, names in gaps.items():
        print(f"MISSING {api}: {', '.join(names)}")
    return 1 if gaps and args.profile == "smoke" else 0


if __name__ == "__main__":
    raise SystemExit(main())
