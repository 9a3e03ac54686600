"""``torchair.llm_datadist.create_npu_tensors``: views of cache memory (the sim's ``create_tensors``)."""

from kvtest.backends.sim.cache import create_tensors as create_npu_tensors

__all__ = ["create_npu_tensors"]
