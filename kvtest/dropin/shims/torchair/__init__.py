"""``torchair`` (standalone): ``llm_datadist.create_npu_tensors`` as in ``torch_npu.dynamo.torchair``."""

from torch_npu.dynamo.torchair import llm_datadist

__all__ = ["llm_datadist"]
