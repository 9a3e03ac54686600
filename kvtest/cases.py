"""Parametrization by profile: ``smoke`` (CI), ``nightly`` (adds MiB-sized blocks, tens of layers),
``stress`` (adds GiB totals, hundreds of blocks). Each profile runs its own cases and the smaller ones."""

from __future__ import annotations

import dataclasses
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
class LayersCase(RowsCase):
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
    def src_layer_range(self) -> range:
        return range(*self.src_layers)

    @property
    def dst_layer_range(self) -> range:
        return range(*self.dst_layers)

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

    def __str__(self) -> str:
        (a, b), (c, d) = self.src_layers, self.dst_layers
        shape = f"L{self.layers}x{self.tensors_per_layer}-{self.blocks}x{self.row}"
        text = f"{self.dtype}-{shape}-layers[{a}:{b}]->[{c}:{d}]"
        if self.src:
            text += f"-blocks({index_list(self.src)})->({index_list(self.dst)})"
        if self.refuse_layer is not None:
            text += f"-refuse{self.refuse_layer}"
        return text + (f"-{self.label}" if self.label else "")
