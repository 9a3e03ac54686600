"""``llm_datadist.v2.llm_datadist`` (hicann/hixl src/python/llm_datadist/llm_datadist/v2/llm_datadist.py)."""

from kvtest.backends.sim.datadist import LLMDataDist

__all__ = ["LLMDataDist"]
