"""``torch_npu.dynamo.torchair``: torchair as torch_npu bundles it."""

from . import llm_datadist

__all__ = ["llm_datadist"]
