"""``llm_datadist.status`` (hicann/hixl src/python/llm_datadist/llm_datadist/status.py)."""

from kvtest.backends.sim.status import LLMException, LLMStatusCode

__all__ = ["LLMException", "LLMStatusCode"]
