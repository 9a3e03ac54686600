"""``llm_datadist.configs`` (hicann/hixl src/python/llm_datadist/llm_datadist/configs.py)."""

from kvtest.backends.sim.cluster import LLMClusterInfo
from kvtest.backends.sim.config import LlmConfig, LLMRole

__all__ = ["LLMClusterInfo", "LLMRole", "LlmConfig"]
