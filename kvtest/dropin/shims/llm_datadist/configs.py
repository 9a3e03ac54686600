"""``llm_datadist.configs`` (hicann/hixl src/python/llm_datadist/llm_datadist/configs.py)."""

from kvtest.backends.sim.cluster import LLMClusterInfo
from kvtest.backends.sim.config import LlmConfig, LLMRole
from kvtest.backends.sim.config import ip_to_int as trans_str_ip

LLMConfig = LlmConfig

__all__ = ["LLMClusterInfo", "LLMConfig", "LLMRole", "LlmConfig", "trans_str_ip"]

# the real package defines these here: tracebacks, reprs and TypeError messages name this module
for _cls in (
    LLMClusterInfo,
    LLMRole,
    LlmConfig,
):
    _cls.__module__ = __name__
