"""``torchair.llm_datadist``."""

from torch_npu.dynamo.torchair.llm_datadist import create_npu_tensors

__all__ = ["create_npu_tensors"]
