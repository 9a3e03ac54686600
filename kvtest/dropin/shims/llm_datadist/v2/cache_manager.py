"""``llm_datadist.v2.cache_manager`` (hicann/hixl src/python/llm_datadist/llm_datadist/v2/
cache_manager.py)."""

from kvtest.backends.sim.cache_manager import CacheManager

__all__ = ["CacheManager"]

# the real package defines these here: tracebacks, reprs and TypeError messages name this module
for _cls in (CacheManager,):
    _cls.__module__ = __name__
