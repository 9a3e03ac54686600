"""Parametrization by profile: ``smoke`` (CI), ``nightly`` (adds MiB-sized blocks, tens of layers),
``stress`` (adds GiB totals, hundreds of blocks). Each profile runs its own cases and the smaller ones."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from kvtest.settings import PROFILES

__all__ = ["DTYPES", "BlocksCase", "cases_for", "parametrize_cases"]


def cases_for(cases: Mapping[str, Sequence[Any]], profile: str) -> list[Any]:
    unknown = set(cases) - set(PROFILES)
    if unknown:
        raise ValueError(f"unknown profile(s) in CASES: {', '.join(sorted(unknown))}")
    upto = PROFILES[: PROFILES.index(profile) + 1]
    return [case for name in upto for case in cases.get(name, ())]


def parametrize_cases(metafunc: pytest.Metafunc) -> None:
    """Parametrize the ``case`` argument from the test module's ``CASES`` for the run's profile."""
    if "case" not in metafunc.fixturenames:
        return
    from kvtest.plugin import settings_of

    cases = getattr(metafunc.module, "CASES", None)
    if cases is None:
        raise pytest.UsageError(f"kvtest: {metafunc.module.__name__} takes 'case' but defines no CASES")
    selected = cases_for(cases, settings_of(metafunc.config).profile)
    metafunc.parametrize("case", selected, ids=[str(case) for case in selected])


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "int8": torch.int8}


@dataclass(frozen=True)
class BlocksCase:
    """``num_tensors`` tensors of ``blocks`` rows of ``row`` elements; copy rows src -> dst."""

    dtype: str
    num_tensors: int
    blocks: int
    row: int
    src: tuple[int, ...]
    dst: tuple[int, ...]
    label: str = ""

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def shape(self) -> list[int]:
        return [self.blocks, self.row]

    @property
    def block_bytes(self) -> int:
        return self.row * self.torch_dtype.itemsize

    @property
    def moved_bytes(self) -> int:
        return len(self.src) * self.block_bytes * self.num_tensors

    def __str__(self) -> str:
        src, dst = ",".join(map(str, self.src)), ",".join(map(str, self.dst))
        size = f"-{self.label}" if self.label else ""
        return f"{self.dtype}-blocks({src})->({dst}){size}"
