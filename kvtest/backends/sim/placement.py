"""Pulls between host and device memory on a two-sided link: which placements a pull may join.

Followed (paths in hicann/hixl):

- ``src/llm_datadist/cache_mgr/data_cache_engine.cc`` (``DataCacheEngine::PullCache``): a pull into a
  ``Placement.HOST`` cache goes through device staging buffers taken from the local device memory
  pool, so it needs ``mem_pool_cfg`` (LLM_PARAM_INVALID "Device memory pool is not enabled.").
- ``src/llm_datadist/fsm/send_state.cc`` (``SendState::ResolveTransferType``): the serving side picks
  device to device, device to host or host to device; host to host is not a transfer type
  (LLM_FEATURE_NOT_ENABLED).
- ``src/llm_datadist/data_transfer/h2d_data_transfer_job.cc`` (``H2DDataTransferJob::Initialize``): from
  a host cache the serving side needs its own device memory pool, and both caches must have the same
  layout (blocks to blocks or slot to slot), else LLM_PARAM_INVALID.

The bytes themselves move as for any other pull (the sim's memory is all CPU memory).
"""

from __future__ import annotations

from kvtest.backends.sim.status import LLMStatusCode, native_error

__all__ = ["check_pull_placements"]


def check_pull_placements(
    api: str,
    *,
    local_host: bool,
    local_blocks: bool,
    local_device_pool: bool,
    remote_host: bool,
    remote_blocks: bool,
    remote_device_pool: bool,
) -> None:
    """Raise as the native pull does when the placements (and pools) cannot take part in it."""
    if local_host and not local_device_pool:
        raise native_error(api, LLMStatusCode.LLM_PARAM_INVALID, "Device memory pool is not enabled")
    if local_host and remote_host:
        raise native_error(
            api,
            LLMStatusCode.LLM_FEATURE_NOT_ENABLED,
            "dst_placement = 0, src_placement = 0 is not supported",
        )
    if remote_host:
        if not remote_device_pool:
            raise native_error(api, LLMStatusCode.LLM_PARAM_INVALID, "Device memory pool is not enabled")
        if remote_blocks != local_blocks:
            raise native_error(
                api,
                LLMStatusCode.LLM_PARAM_INVALID,
                "different layout is not supported by H2D data transfer, "
                f"src_is_block = {int(remote_blocks)} dst_is_block = {int(local_blocks)}",
            )
