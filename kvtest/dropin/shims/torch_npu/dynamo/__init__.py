"""``torch_npu.dynamo``."""
