"""``llm_datadist.data_type`` (hicann/hixl src/python/llm_datadist/llm_datadist/data_type.py)."""

from kvtest.backends.sim.cache import DataType

__all__ = ["DataType"]
