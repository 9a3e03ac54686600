"""Argument checks worded like the real package's: TypeError for types, ValueError for ranges."""

from __future__ import annotations

from typing import Any

UINT16_MAX = 2**16 - 1
UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1


def check_type(arg: str, value: Any, *types: type) -> None:
    """Raise ``TypeError("<arg> only support [...], but got <type>")`` unless ``value`` is one of ``types``.

    ``bool`` is refused where ``int`` is asked for, as the native binding does.
    """
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        names = ", ".join(t.__name__ for t in types)
        raise TypeError(f"{arg} only support [{names}], but got {type(value).__name__}")


def check_int(arg: str, value: Any, low: int, high: int) -> int:
    """An int in ``[low, high]``: TypeError for another type, ValueError out of range."""
    check_type(arg, value, int)
    if not low <= value <= high:
        raise ValueError(f"{arg}'s value is out of range, [{low}, {high}], but got {value}")
    return int(value)


def check_int_list(arg: str, value: Any, low: int, high: int) -> list[int]:
    """A list or tuple of ints, each in ``[low, high]``."""
    check_type(arg, value, list, tuple)
    for item in value:
        check_int(f"{arg} item", item, low, high)
    return [int(v) for v in value]
