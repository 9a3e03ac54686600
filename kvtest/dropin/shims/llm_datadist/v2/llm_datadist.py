"""``llm_datadist.v2.llm_datadist`` (hicann/hixl src/python/llm_datadist/llm_datadist/v2/llm_datadist.py),
with its at-exit handler (finalize the live instance)."""

from kvtest.backends.sim.datadist import LLMDataDist, _shutdown_handler

__all__ = ["LLMDataDist", "_shutdown_handler"]

# the real package defines these here: tracebacks, reprs and TypeError messages name this module
for _cls in (LLMDataDist,):
    _cls.__module__ = __name__
