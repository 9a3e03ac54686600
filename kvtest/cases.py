"""Parametrization by profile: ``smoke`` (CI), ``nightly`` (adds MiB-sized blocks, tens of layers),
``stress`` (adds GiB totals, hundreds of blocks). Each profile runs its own cases and the smaller ones."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from kvtest.settings import PROFILES
from kvtest.state import settings_of

__all__ = [
    "DTYPES",
    "PROFILE_REPEATS",
    "SWEEP_REPEATS",
    "BlocksCase",
    "RowsCase",
    "cases_for",
    "index_list",
    "parametrize_by_type",
    "parametrize_cases",
]


#: timed transfers per case of each profile's own list (after one untimed warm-up when above 1).
#: smoke cases are CI-sized one-shots that ``kvtest compare`` checks for outcome only; nightly and
#: stress cases repeat so their bandwidth can be gated (docs/results.md, "Gateable measurements")
PROFILE_REPEATS = {"smoke": 1, "nightly": 10, "stress": 5}


def cases_for(cases: Mapping[str, Sequence[Any]], profile: str) -> list[Any]:
    """The cases of ``profile`` and of every smaller profile; each takes the repeats of the list it is in."""
    unknown = set(cases) - set(PROFILES)
    if unknown:
        raise ValueError(f"unknown profile(s) in CASES: {', '.join(sorted(unknown))}")
    upto = PROFILES[: PROFILES.index(profile) + 1]
    return [_with_repeats(case, PROFILE_REPEATS[name]) for name in upto for case in cases.get(name, ())]


def _with_repeats(case: Any, repeats: int) -> Any:
    fields = getattr(case, "__dataclass_fields__", {})
    return dataclasses.replace(case, repeats=repeats) if "repeats" in fields else case


def parametrize_cases(metafunc: pytest.Metafunc) -> None:
    """Parametrize the ``case`` argument from the test module's ``CASES`` for the run's profile."""
    if "case" not in metafunc.fixturenames:
        return
    cases = getattr(metafunc.module, "CASES", None)
    if cases is None:
        raise pytest.UsageError(f"kvtest: {metafunc.module.__name__} takes 'case' but defines no CASES")
    selected = cases_for(cases, settings_of(metafunc.config).profile)
    metafunc.parametrize("case", selected, ids=[str(case) for case in selected])


def parametrize_by_type(metafunc: pytest.Metafunc, kinds: Mapping[str, type]) -> None:
    """For modules whose tests take cases of different types: parametrize each argument named in
    ``kinds`` (e.g. ``{"copy_case": CopyCacheCase}``) with the module's ``CASES`` of exactly that type."""
    wanted = [(arg, kind) for arg, kind in kinds.items() if arg in metafunc.fixturenames]
    if not wanted:
        return
    selected = cases_for(metafunc.module.CASES, settings_of(metafunc.config).profile)
    for arg, kind in wanted:
        cases = [case for case in selected if type(case) is kind]
        metafunc.parametrize(arg, cases, ids=[str(case) for case in cases])


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "int8": torch.int8}


def index_list(values: Sequence[int]) -> str:
    """``0,1,2`` for a short list; ``0,2,..,254`` for a long even progression, to keep test ids short."""
    step = values[1] - values[0] if len(values) > 8 else 0
    if step and all(b - a == step for a, b in zip(values, values[1:])):
        return f"{values[0]},{values[1]},..,{values[-1]}"
    return ",".join(map(str, values))


class RowsCase:
    """What every case type shares: a dtype by name, and ``row`` elements per block or batch slot."""

    dtype: str
    row: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def row_bytes(self) -> int:
        return self.row * self.torch_dtype.itemsize


def cache_bytes(case: object) -> int:
    """The bytes of one side's KV cache in ``case`` (every tensor of it); 0 for a case without one cache
    shape (copy_cache's two pools, a bandwidth sweep point) or no case at all."""
    shape = getattr(case, "shape", None)
    tensors = getattr(case, "num_tensors", None)
    if not isinstance(case, RowsCase) or not isinstance(shape, list) or not isinstance(tensors, int):
        return 0
    return math.prod(shape) * case.torch_dtype.itemsize * tensors


#: a case's memory pools (``mem_pool_cfg``, ``host_mem_pool_cfg``), by the names case types give them
POOL_ATTRIBUTES = ("pool", "device_pool", "host_pool")


def tensor_bytes(case: object) -> int:
    """The bytes of one tensor of one side's KV cache in ``case``; 0 where :func:`cache_bytes` is 0."""
    tensors = getattr(case, "num_tensors", None)
    return cache_bytes(case) // tensors if isinstance(tensors, int) and tensors > 0 else 0


def device_bytes(case: object) -> int:
    """The memory one side of ``case`` holds at its peak: its KV cache, or the memory pools its
    LLMDataDist inits with (where the case names them, :data:`POOL_ATTRIBUTES`) when those are larger,
    and one tensor more: the expected tensor a byte check makes beside the cache
    (:func:`kvtest.patterns.check_all` holds one at a time; on the sim it comes from the same host
    memory). A pool is memory from the start: the sim writes every byte of it at init, however small
    the cache in it (64 MiB for the pull_cache sample's 128 KiB). Pools count for any case type that
    names them (pull from cache to blocks has no single cache shape)."""
    sizes = (getattr(case, name, 0) for name in POOL_ATTRIBUTES)
    pools = sum(size for size in sizes if isinstance(size, int))
    return max(cache_bytes(case), pools) + tensor_bytes(case)


class LayerRanges:
    """What the layer-ranged case types share: source layers ``src_layers`` (start, stop) go to
    ``dst_layers``, ``tensors_per_layer`` tensors each."""

    src_layers: tuple[int, int]
    dst_layers: tuple[int, int]
    tensors_per_layer: int

    @property
    def src_layer_range(self) -> range:
        return range(*self.src_layers)

    @property
    def dst_layer_range(self) -> range:
        return range(*self.dst_layers)

    def tensor_map(self, layers: Sequence[int] | None = None) -> dict[int, int]:
        """Destination tensor index -> source tensor index, for the source layers in ``layers``
        (default: every source layer of the range)."""
        tpl = self.tensors_per_layer
        out = {}
        for s, d in zip(self.src_layer_range, self.dst_layer_range):
            if layers is None or s in layers:
                for k in range(tpl):
                    out[d * tpl + k] = s * tpl + k
        return out


@dataclass(frozen=True)
class BlocksCase(RowsCase):
    """``num_tensors`` tensors of ``blocks`` rows of ``row`` elements; copy rows src -> dst."""

    dtype: str
    num_tensors: int
    blocks: int
    row: int
    src: tuple[int, ...]
    dst: tuple[int, ...]
    label: str = ""
    #: timed transfers (PROFILE_REPEATS of the profile list the case comes from); not in the test id
    repeats: int = 1

    @property
    def shape(self) -> list[int]:
        return [self.blocks, self.row]

    @property
    def block_bytes(self) -> int:
        return self.row_bytes

    @property
    def moved_bytes(self) -> int:
        return len(self.src) * self.block_bytes * self.num_tensors

    def __str__(self) -> str:
        size = f"-{self.label}" if self.label else ""
        return f"{self.dtype}-blocks({index_list(self.src)})->({index_list(self.dst)}){size}"


KiB = 1024
MiB = 1024 * KiB
SWEEP_BLOCK_BYTES = (4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, MiB, 4 * MiB, 16 * MiB, 64 * MiB)
SWEEP_COUNTS = (1, 4, 16, 64, 256)
#: timed transfers per sweep point, after one untimed warm-up
SWEEP_REPEATS = 5
#: the largest total one sweep point moves, by backend
SWEEP_CAP = {"sim": 256 * MiB, "npu": 4096 * MiB}


def size_text(nbytes: int) -> str:
    for unit, size in (("GiB", 1024 * MiB), ("MiB", MiB), ("KiB", KiB)):
        if nbytes >= size and nbytes % size == 0:
            return f"{nbytes // size}{unit}"
    return f"{nbytes}B"


@dataclass(frozen=True)
class SweepPoint:
    """One point of the bandwidth sweep: ``count`` blocks of ``block_bytes`` through ``api``."""

    api: str  # "pull_blocks" or "push_blocks"
    block_bytes: int
    count: int

    @property
    def total(self) -> int:
        return self.block_bytes * self.count

    def __str__(self) -> str:
        return f"{self.api}-{size_text(self.block_bytes)}x{self.count}"


def sweep_points(cap: int) -> list[SweepPoint]:
    return [
        SweepPoint(api, size, count)
        for api in ("pull_blocks", "push_blocks")
        for size in SWEEP_BLOCK_BYTES
        for count in SWEEP_COUNTS
        if size * count <= cap
    ]


@dataclass(frozen=True)
class CacheCase(RowsCase):
    """``num_tensors`` tensors of ``batch`` slots of ``row`` elements (a non-blocks cache, batch dim 0);
    move slot ``src_batch`` of the source into slot ``dst_batch`` of the destination."""

    dtype: str
    num_tensors: int
    batch: int
    row: int
    src_batch: int
    dst_batch: int
    label: str = ""
    #: timed transfers (PROFILE_REPEATS of the profile list the case comes from); not in the test id
    repeats: int = 1

    @property
    def shape(self) -> list[int]:
        return [self.batch, self.row]

    @property
    def slot_bytes(self) -> int:
        return self.row_bytes

    @property
    def moved_bytes(self) -> int:
        return self.slot_bytes * self.num_tensors

    def __str__(self) -> str:
        size = f"-{self.label}" if self.label else ""
        shape = f"{self.num_tensors}x{self.batch}x{self.row}"
        return f"{self.dtype}-{shape}-slot{self.src_batch}->{self.dst_batch}{size}"


@dataclass(frozen=True)
class LayersCase(LayerRanges, RowsCase):
    """A blocks cache of ``num_tensors`` tensors (``tensors_per_layer`` per layer) of ``blocks`` rows of
    ``row`` elements; send source layers ``src_layers`` (start, stop) to ``dst_layers``.

    ``src``/``dst`` are block lists where a flow also moves blocks (empty: every block, in place).
    ``refuse_layer``: a layer the LayerSynchronizer refuses (returns False for), if any.
    """

    dtype: str
    num_tensors: int
    blocks: int
    row: int
    src_layers: tuple[int, int]
    dst_layers: tuple[int, int]
    tensors_per_layer: int = 2
    src: tuple[int, ...] = ()
    dst: tuple[int, ...] = ()
    refuse_layer: int | None = None
    label: str = ""
    #: timed transfers (PROFILE_REPEATS of the profile list the case comes from); not in the test id
    repeats: int = 1

    @property
    def shape(self) -> list[int]:
        return [self.blocks, self.row]

    @property
    def layers(self) -> int:
        return self.num_tensors // self.tensors_per_layer

    @property
    def block_bytes(self) -> int:
        return self.row_bytes

    @property
    def moved_bytes(self) -> int:
        """Bytes the layer-ranged transfer moves (every block of every tensor of the source layers)."""
        return self.blocks * self.block_bytes * len(self.src_layer_range) * self.tensors_per_layer

    @property
    def moved_block_bytes(self) -> int:
        """Bytes a whole-cache transfer of the ``src`` blocks moves."""
        return len(self.src) * self.block_bytes * self.num_tensors

    def __str__(self) -> str:
        (a, b), (c, d) = self.src_layers, self.dst_layers
        shape = f"L{self.layers}x{self.tensors_per_layer}-{self.blocks}x{self.row}"
        text = f"{self.dtype}-{shape}-layers[{a}:{b}]->[{c}:{d}]"
        if self.src:
            text += f"-blocks({index_list(self.src)})->({index_list(self.dst)})"
        if self.refuse_layer is not None:
            text += f"-refuse{self.refuse_layer}"
        return text + (f"-{self.label}" if self.label else "")


# -- cases of the APIs no vendor sample reaches (tests/samples/test_cache_apis.py, test_transfer_apis.py) --

#: the real memory pool hands out 64 KiB pages (page_shift 16 by default: DataCacheEngine::
#: InitializeDeviceMemoryPool in hicann/hixl src/llm_datadist/cache_mgr/data_cache_engine.cc)
POOL_PAGE = 64 * KiB


def pool_bytes(*tensor_bytes: int, tensors: int) -> int:
    """A ``memory_size`` that holds caches of ``tensors`` tensors of each of ``tensor_bytes``, with slack
    for page rounding and fragmentation."""
    need = sum(tensors * (-(-size // POOL_PAGE) + 1) * POOL_PAGE for size in tensor_bytes)
    return need + need // 4 + 2 * MiB


@dataclass(frozen=True)
class CopyCacheCase(RowsCase):
    """``copy_cache`` between two pool caches of ``num_tensors`` tensors: the source has ``src_batch`` slots
    of ``row`` elements, the destination ``dst_batch`` slots of ``dst_row`` (default ``row``). ``size``
    bytes (-1: the source slot less ``offset``) from ``offset`` in source slot ``src_index`` land at
    ``offset`` in destination slot ``dst_index``. ``src_host``/``dst_host`` place a cache in the host pool.
    """

    dtype: str
    num_tensors: int
    src_batch: int
    dst_batch: int
    row: int
    src_index: int
    dst_index: int
    offset: int = 0
    size: int = -1
    dst_row: int | None = None
    src_host: bool = False
    dst_host: bool = False
    label: str = ""

    def __post_init__(self) -> None:
        n = self.copy_bytes
        if not (0 < n and self.offset + n <= self.src_stride and self.offset + n <= self.dst_stride):
            raise ValueError(f"{self}: offset {self.offset} + size {n} does not fit both slots")

    @property
    def src_shape(self) -> list[int]:
        return [self.src_batch, self.row]

    @property
    def dst_shape(self) -> list[int]:
        return [self.dst_batch, self.dst_row if self.dst_row is not None else self.row]

    @property
    def src_stride(self) -> int:
        return self.row_bytes

    @property
    def dst_stride(self) -> int:
        return self.dst_shape[1] * self.torch_dtype.itemsize

    @property
    def copy_bytes(self) -> int:
        """Bytes copied per tensor: ``size``, or the source slot from ``offset`` on (the native rule)."""
        return self.size if self.size != -1 else self.src_stride - self.offset

    @property
    def moved_bytes(self) -> int:
        return self.copy_bytes * self.num_tensors

    @property
    def pool(self) -> int:
        src, dst = self.src_batch * self.src_stride, self.dst_batch * self.dst_stride
        return pool_bytes(src, dst, tensors=self.num_tensors)

    def __str__(self) -> str:
        hosts = (("src_host", self.src_host), ("dst_host", self.dst_host))
        where = "".join(f"-{name}" for name, host in hosts if host)
        part = "" if (self.offset, self.size) == (0, -1) else f"-bytes{self.offset}+{self.size}"
        shape = f"{self.num_tensors}x{self.src_batch}x{self.row}->{self.dst_shape[0]}x{self.dst_shape[1]}"
        size = f"-{self.label}" if self.label else ""
        return f"{self.dtype}-{shape}-slot{self.src_index}->{self.dst_index}{part}{where}{size}"


@dataclass(frozen=True)
class CopyBlocksCase(RowsCase):
    """``copy_blocks`` inside one blocks cache of ``num_tensors`` x [``blocks``, ``row``]: ``copies`` is
    ``((src, (dst, ...)), ...)``, the ``{src: [dst, ...]}`` the API takes.

    Sources and destinations are disjoint and no block is written twice: the native side may run the
    copies of one call concurrently (a thread pool below 2 MiB), so an overlapping call has no defined
    result (``CopyJob`` in hicann/hixl src/llm_datadist/cache_mgr/cache_manager.cc).
    """

    dtype: str
    num_tensors: int
    blocks: int
    row: int
    copies: tuple[tuple[int, tuple[int, ...]], ...]
    label: str = ""

    def __post_init__(self) -> None:
        if set(self.src_rows) & set(self.dst_rows) or len(set(self.dst_rows)) != len(self.dst_rows):
            raise ValueError(f"{self}: a block is both copied and written, or written twice")

    @property
    def shape(self) -> list[int]:
        return [self.blocks, self.row]

    @property
    def copy_info(self) -> dict[int, list[int]]:
        return {src: list(dsts) for src, dsts in self.copies}

    @property
    def src_rows(self) -> list[int]:
        return [src for src, dsts in self.copies for _ in dsts]

    @property
    def dst_rows(self) -> list[int]:
        return [dst for _, dsts in self.copies for dst in dsts]

    @property
    def moved_bytes(self) -> int:
        return len(self.dst_rows) * self.row_bytes * self.num_tensors

    def __str__(self) -> str:
        pairs = ";".join(f"{s}->{index_list(d)}" for s, d in self.copies)
        size = f"-{self.label}" if self.label else ""
        return f"{self.dtype}-{self.num_tensors}x{self.blocks}x{self.row}-copy({pairs}){size}"


@dataclass(frozen=True)
class MixRoleCase(BlocksCase):
    """A :class:`BlocksCase` run with both roles ``LLMRole.MIX``: d pushes ``src`` of its blocks into p's
    ``dst`` blocks, then pulls p's ``src`` blocks into its own ``dst`` blocks."""

    def __post_init__(self) -> None:
        if set(self.src) & set(self.dst):
            raise ValueError(f"{self}: src and dst blocks overlap; the push would change what the pull reads")


@dataclass(frozen=True)
class SlotLayersCase(LayerRanges, RowsCase):
    """Two non-blocks caches of ``num_tensors`` tensors (2 per layer): the source has ``batch`` slots of
    ``row`` elements, the destination ``dst_batch``. Source slot ``src_slot`` of layers ``src_layers``
    (start, stop) goes to slot ``dst_slot`` of layers ``dst_layers``."""

    dtype: str
    num_tensors: int
    batch: int
    dst_batch: int
    row: int
    src_slot: int
    dst_slot: int
    src_layers: tuple[int, int]
    dst_layers: tuple[int, int]
    label: str = ""

    tensors_per_layer = 2

    @property
    def src_shape(self) -> list[int]:
        return [self.batch, self.row]

    @property
    def dst_shape(self) -> list[int]:
        return [self.dst_batch, self.row]

    @property
    def moved_bytes(self) -> int:
        return self.row_bytes * len(self.tensor_map())

    def __str__(self) -> str:
        (a, b), (c, d) = self.src_layers, self.dst_layers
        shape = f"{self.num_tensors}x{self.batch}x{self.row}->{self.dst_batch}"
        size = f"-{self.label}" if self.label else ""
        return f"{self.dtype}-{shape}-slot{self.src_slot}->{self.dst_slot}-layers[{a}:{b}]->[{c}:{d}]{size}"


@dataclass(frozen=True)
class ToBlocksCase(LayerRanges, RowsCase):
    """Cache to blocks: the source has ``num_tensors`` x [``batch``, ``row``], the destination blocks
    cache ``num_tensors`` x [``blocks``, ``block_row``]; ``dst_block_memory_size`` is one destination
    block. Piece ``j`` of source slot ``slot`` (``block_row`` elements from ``j * block_row``) lands in
    block ``dst[j]``, for source layers ``src_layers`` into ``dst_layers``."""

    dtype: str
    num_tensors: int
    batch: int
    row: int
    blocks: int
    block_row: int
    slot: int
    dst: tuple[int, ...]
    src_layers: tuple[int, int]
    dst_layers: tuple[int, int]
    label: str = ""

    tensors_per_layer = 2

    def __post_init__(self) -> None:
        if (self.batch * self.row) % self.block_row:
            raise ValueError(f"{self}: the source tensor is not a whole number of blocks (the native last "
                             "piece would be cut)")
        if len(self.dst) * self.block_row > self.row:
            raise ValueError(f"{self}: more destination blocks than the slot fills")

    @property
    def src_shape(self) -> list[int]:
        return [self.batch, self.row]

    @property
    def dst_shape(self) -> list[int]:
        return [self.blocks, self.block_row]

    @property
    def block_bytes(self) -> int:
        return self.block_row * self.torch_dtype.itemsize

    @property
    def moved_bytes(self) -> int:
        return len(self.dst) * self.block_bytes * len(self.tensor_map())

    def __str__(self) -> str:
        (a, b), (c, d) = self.src_layers, self.dst_layers
        size = f"-{self.label}" if self.label else ""
        return (
            f"{self.dtype}-{self.num_tensors}x{self.batch}x{self.row}-slot{self.slot}->blocks"
            f"({index_list(self.dst)})x{self.block_row}-layers[{a}:{b}]->[{c}:{d}]{size}"
        )


#: device-pool memory a pull into or out of a host cache stages through: two 32 MiB buffers on the
#: pulling side (``D2HDataTransferClient``: num_buffers_ 2, kDefaultBufferSize) or on the serving side
#: (``H2DDataTransferJob``: kDefaultBufferNum 2, buffer_size_ 32 MiB), in hicann/hixl
#: src/llm_datadist/data_transfer/
HOST_PULL_STAGING = 2 * 32 * MiB


@dataclass(frozen=True)
class HostPullCase(RowsCase):
    """A two-sided ``pull_cache`` between the host and the device pools: p's cache of ``num_tensors`` x
    [``batch``, ``row``] is in its host pool (``src_host``) or device pool, d's in the other one; d pulls
    p's slot ``s`` into its batch index ``i`` for each ``(s, i)`` in ``pulls``."""

    dtype: str
    num_tensors: int
    batch: int
    row: int
    pulls: tuple[tuple[int, int], ...]
    src_host: bool
    label: str = ""

    @property
    def shape(self) -> list[int]:
        return [self.batch, self.row]

    @property
    def pull_bytes(self) -> int:
        return self.row_bytes * self.num_tensors

    @property
    def host_pool(self) -> int:
        """The cache plus the one-slot host cache the host -> host refusal uses."""
        return pool_bytes(self.batch * self.row_bytes, self.row_bytes, tensors=self.num_tensors)

    @property
    def device_pool(self) -> int:
        """The caches plus the staging buffers a host pull takes from the device pool on either end."""
        return self.host_pool + HOST_PULL_STAGING + MiB

    def __str__(self) -> str:
        where = "host->device" if self.src_host else "device->host"
        slots = ",".join(f"{s}->{i}" for s, i in self.pulls)
        size = f"-{self.label}" if self.label else ""
        return f"{self.dtype}-{self.num_tensors}x{self.batch}x{self.row}-{where}-slots({slots}){size}"
