"""Deliberate sim bugs, for proving that the sample tests' non-byte checks fail when they should.

Loaded into every role of a local run through ``PYTEST_PLUGINS=kvtest_sim_bugs`` (this folder on
``PYTHONPATH``); ``KVTEST_SIM_BUG=<name>`` picks the bug. Each bug breaks one real behaviour the sim
follows, so the test guarding that behaviour must fail:

- ``copy-unchecked``: copy_blocks copies out-of-range blocks and copy_cache out-of-range slots without
  refusing (native LLM_PARAM_INVALID in CacheManager::CopyCache).
- ``timeout-ignored``: transfers ignore sync_kv_timeout (LLM_TIMEOUT).
- ``prefix-consumed``: a pull releases a prefix-id CacheKey as it does a req-id key.
- ``dealloc-keeps-key``: deallocate_blocks_cache does nothing, so its BlocksCacheKey stays pullable.
- ``host-to-host``: a host -> host pull is not refused (LLM_FEATURE_NOT_ENABLED).
"""

from __future__ import annotations

import os
from typing import Any

BUG = os.environ.get("KVTEST_SIM_BUG", "")


def _install(name: str) -> None:
    from kvtest.backends.sim import cache_manager, local_copy, placement, transport

    if name == "copy-unchecked":
        real_copy_blocks = local_copy.copy_blocks

        def copy_blocks(cm: Any, cache: Any, info: Any) -> None:
            count = cache.cache_desc.batch_size
            real_copy_blocks(cm, cache, {s: [d % count for d in ds] for s, ds in info.items()})

        local_copy.copy_blocks = copy_blocks
        real_copy_cache = local_copy.copy_cache

        def copy_cache(cm: Any, dst: Any, src: Any, dst_i: int, src_i: int, offset: int, size: int, req: Any) -> None:
            real_copy_cache(cm, dst, src, dst_i % dst.cache_desc.batch_size, src_i % src.cache_desc.batch_size,
                            0, -1, req)

        local_copy.copy_cache = copy_cache
    elif name == "timeout-ignored":
        real_transfer = transport.Transport.transfer

        def transfer(self: Any, op: str, peer: str, segments: Any, deadline: float, **kwargs: Any) -> None:
            real_transfer(self, op, peer, segments, deadline + 3600.0, **kwargs)

        transport.Transport.transfer = transfer  # type: ignore[method-assign]
    elif name == "prefix-consumed":
        real_consume = cache_manager.CacheManager._consume

        def _consume(self: Any, claim: Any, pulled: Any) -> None:
            if claim is not None and not claim[1].get("consumable"):
                plane, _ = self._ep.ctx()
                plane.release(*claim)  # released like a req-id key of a pool cache
                return
            real_consume(self, claim, pulled)

        cache_manager.CacheManager._consume = _consume  # type: ignore[method-assign]
    elif name == "dealloc-keeps-key":

        def deallocate_blocks_cache(self: Any, cache: Any) -> None:
            self._begin("deallocate_blocks_cache")  # and nothing else: the cache and its key stay

        cache_manager.CacheManager.deallocate_blocks_cache = deallocate_blocks_cache  # type: ignore[method-assign]
    elif name == "host-to-host":
        real_check = placement.check_pull_placements

        def check(api: str, **kw: Any) -> None:
            if kw["local_host"] and kw["remote_host"]:
                return
            real_check(api, **kw)

        cache_manager.check_pull_placements = check
    elif name:
        raise ValueError(f"unknown KVTEST_SIM_BUG {name!r}")


_install(BUG)
