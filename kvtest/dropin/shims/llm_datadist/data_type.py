"""``llm_datadist.data_type`` (hicann/hixl src/python/llm_datadist/llm_datadist/data_type.py), with its
numpy tables loaded on first use as there."""

from typing import Any

from kvtest.backends.sim.cache import DataType

__all__ = ["DataType"]

_NUMPY_TABLES = ("dtype_to_np_dtype", "valid_np_dtypes", "np_dtype_to_dtype")


def __getattr__(name: str) -> Any:
    if name not in _NUMPY_TABLES:
        raise AttributeError(f"module {__name__} has no attribute {name}")
    import numpy as np

    to_np = {
        DataType.DT_FLOAT: np.float32,
        DataType.DT_FLOAT16: np.float16,
        DataType.DT_BF16: np.float16,  # numpy has no bfloat16; the real table says float16 too
        DataType.DT_INT8: np.int8,
        DataType.DT_INT16: np.int16,
        DataType.DT_UINT16: np.uint16,
        DataType.DT_UINT8: np.uint8,
        DataType.DT_INT32: np.int32,
        DataType.DT_INT64: np.int64,
        DataType.DT_UINT32: np.uint32,
        DataType.DT_UINT64: np.uint64,
        DataType.DT_BOOL: np.bool_,
        DataType.DT_DOUBLE: np.double,
        DataType.DT_STRING: np.bytes_,
    }
    from_np = {np.dtype(t): dt for dt, t in to_np.items() if dt != DataType.DT_BF16}
    tables = {
        "dtype_to_np_dtype": to_np,
        "valid_np_dtypes": list(to_np.values()),
        "np_dtype_to_dtype": from_np,
    }
    globals().update(tables)
    return tables[name]


# the real package defines these here: tracebacks, reprs and TypeError messages name this module
for _cls in (DataType,):
    _cls.__module__ = __name__
