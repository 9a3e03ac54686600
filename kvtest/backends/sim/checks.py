"""Argument checks with the real package's semantics and wording (hicann/hixl
src/python/llm_datadist/llm_datadist/utils/utils.py): TypeError for a wrong type, ValueError for an int
outside its C type's range. As there, ``bool`` passes where ``int`` is asked for (it is an int), and
``check_isinstance`` lets ``None`` through unless told otherwise."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

UINT8_MAX = 2**8 - 1
UINT16_MAX = 2**16 - 1
UINT32_MAX = 2**32 - 1
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1

#: C type name -> inclusive range, as the real range checks name them in their messages
_C_TYPES = {
    "uint8": (0, UINT8_MAX),
    "uint16": (0, UINT16_MAX),
    "int32": (INT32_MIN, INT32_MAX),
    "uint32": (0, UINT32_MAX),
    "int64": (INT64_MIN, INT64_MAX),
    "uint64": (0, UINT64_MAX),
}


def _as_list(classes: type | Iterable[type]) -> list[type]:
    return [classes] if isinstance(classes, type) else list(classes)


def check_inner(arg: str, value: Any, inner: type) -> None:
    for item in value:
        if not isinstance(item, inner):
            raise TypeError(f"{arg} inner type only support {[inner]}, but got {type(item)}.")


def check_isinstance(
    arg: str,
    value: Any,
    classes: type | Iterable[type],
    inner: type | None = None,
    extra_fmt: str = "",
    allow_none: bool = True,
) -> Any:
    """``value`` unless it is none of ``classes`` (``None`` passes when ``allow_none``); items checked
    against ``inner`` when given."""
    if allow_none and value is None:
        return value
    wanted = _as_list(classes)
    for clazz in wanted:
        if isinstance(value, clazz):
            if inner is not None:
                check_inner(arg, value, inner)
            return value
    names = [clazz.__name__ for clazz in wanted]
    raise TypeError(f"{extra_fmt}{arg} only support {names}, but got {type(value)}.")


def check_dict(
    arg: str, value: Mapping[Any, Any], key_type: type, value_type: type, inner: type | None = None
) -> None:
    for k, v in value.items():
        if not isinstance(k, key_type):
            raise TypeError(f"{arg} dict key only support {key_type}, but got {type(k)}.")
        if not isinstance(v, value_type):
            raise TypeError(f"{arg} dict value only support {value_type}, but got {type(v)}.")
        if inner is not None:
            check_inner("dict value", v, inner)


def check_c_int(arg: str, value: Any, c_type: str) -> int:
    """An int within C type ``c_type`` (``uint64``, ``int32``, ...): TypeError, else ValueError."""
    check_isinstance(arg, value, [int], allow_none=False)
    low, high = _C_TYPES[c_type]
    if not low <= value <= high:
        raise ValueError(f"{arg}'s value is out of range,{value} is not a {c_type} value.")
    return int(value)


def check_uint64(arg: str, value: Any) -> int:
    return check_c_int(arg, value, "uint64")


def check_int64(arg: str, value: Any) -> int:
    return check_c_int(arg, value, "int64")


def check_uint32(arg: str, value: Any) -> int:
    return check_c_int(arg, value, "uint32")


def check_int32(arg: str, value: Any) -> int:
    return check_c_int(arg, value, "int32")


def check_uint16(arg: str, value: Any) -> int:
    return check_c_int(arg, value, "uint16")


def check_uint8(arg: str, value: Any) -> int:
    return check_c_int(arg, value, "uint8")


def check_list_int32(arg: str, value: Iterable[Any]) -> None:
    for item in value:
        check_int32(arg, item)


def check_list_int64(arg: str, value: Iterable[Any]) -> None:
    for item in value:
        check_int64(arg, item)


def check_list_uint64(arg: str, value: Iterable[Any]) -> None:
    for item in value:
        check_uint64(arg, item)


def check_positive_or_set_default(arg: str, value: Any, default: int = -1) -> int:
    if value is None:
        return default
    check_int64(arg, value)
    if value < 0:
        raise ValueError(f"{arg}'s value:{value} is invalid, should be >= 0")
    return int(value)


def check_type(arg: str, value: Any, *types: type) -> None:
    """``check_isinstance`` without letting ``None`` through (unless ``type(None)`` is among ``types``)."""
    check_isinstance(arg, value, list(types), allow_none=False)


def check_int(arg: str, value: Any, low: int, high: int) -> int:
    """An int in ``[low, high]``. A range that is a C type's is checked and worded as the real package
    does; a narrower one (the sim's own limits) says the range."""
    for c_type, bounds in _C_TYPES.items():
        if bounds == (low, high):
            return check_c_int(arg, value, c_type)
    check_isinstance(arg, value, [int], allow_none=False)
    if not low <= value <= high:
        raise ValueError(f"{arg}'s value is out of range, [{low}, {high}], but got {value}")
    return int(value)


def check_int_list(arg: str, value: Any, low: int, high: int) -> list[int]:
    """A list or tuple of ints, each in ``[low, high]``."""
    check_type(arg, value, list, tuple)
    for item in value:
        check_int(arg, item, low, high)
    return [int(v) for v in value]
