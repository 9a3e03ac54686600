"""Status codes and the exception every llm_datadist API raises (values from the C++ header)."""

from __future__ import annotations

from enum import IntEnum
from typing import NoReturn


class LLMStatusCode(IntEnum):
    """Return codes; ``str()`` gives ``LLMStatusCode.NAME`` as the real package prints them.

    Members and order as hicann/hixl src/python/llm_datadist/llm_datadist/status.py; values from
    include/llm_datadist/llm_error_codes.h (0x5010B000 + n) and src/python/llm_wrapper/llm_wrapper_v2.cc.
    """

    LLM_SUCCESS = 0x0
    LLM_FAILED = 0xFFFFFFFF
    LLM_PARAM_INVALID = 0x5010B005
    LLM_WAIT_PROCESS_TIMEOUT = 0x5010B001
    LLM_KV_CACHE_NOT_EXIST = 0x5010B002
    LLM_REPEAT_REQUEST = 0x5010B003
    LLM_REQUEST_ALREADY_COMPLETED = 0x5010B004
    LLM_ENGINE_FINALIZED = 0x5010B006
    LLM_NOT_YET_LINK = 0x5010B007
    LLM_ALREADY_LINK = 0x5010B008
    LLM_LINK_FAILED = 0x5010B009
    LLM_UNLINK_FAILED = 0x5010B00A
    LLM_NOTIFY_PROMPT_UNLINK_FAILED = 0x5010B00B
    LLM_CLUSTER_NUM_EXCEED_LIMIT = 0x5010B00C
    LLM_PROCESSING_LINK = 0x5010B00D
    LLM_DEVICE_OUT_OF_MEMORY = 0x5010B00E
    LLM_PREFIX_ALREADY_EXIST = 0x5010B00F
    LLM_PREFIX_NOT_EXIST = 0x5010B010
    LLM_SEQ_LENOVERLIMIT = 0x5010B011
    LLM_NO_FREE_BLOCK = 0x5010B012
    LLM_BLOCKS_OUT_OF_MEMORY = 0x5010B013
    LLM_EXIST_LINK = 0x5010B018
    LLM_FEATURE_NOT_ENABLED = 0x5010B019
    LLM_TIMEOUT = 0x5010B01A
    LLM_LINK_BUSY = 0x5010B01B
    LLM_OUT_OF_MEMORY = 0x5010B01C
    LLM_DEVICE_MEM_ERROR = 507053  # ACL_ERROR_RT_DEVICE_MEM_ERROR (runtime code, not an LLM_* one)
    LLM_SUSPECT_REMOTE_ERROR = 507057  # ACL_ERROR_RT_SUSPECT_REMOTE_ERROR
    LLM_UNKNOWN_ERROR = -1

    def __str__(self) -> str:
        return f"LLMStatusCode.{self.name}"


class LLMException(RuntimeError):
    """An llm_datadist failure; ``status_code`` says which (LLM_SUCCESS unless given, as in the real
    package: hicann/hixl src/python/llm_datadist/llm_datadist/status.py)."""

    def __init__(self, *args: object, status_code: LLMStatusCode = LLMStatusCode.LLM_SUCCESS) -> None:
        super().__init__(*args)
        self._status_code = status_code

    @property
    def status_code(self) -> LLMStatusCode:
        return self._status_code


class Status:
    """A status code with ``is_ok()``, as the real package's ``Status``."""

    def __init__(self, status: LLMStatusCode) -> None:
        self._status_code = status

    def is_ok(self) -> bool:
        return bool(self._status_code == LLMStatusCode.LLM_SUCCESS)

    @property
    def status_code(self) -> LLMStatusCode:
        return self._status_code


def native_error(api: str, code: LLMStatusCode, details: str) -> LLMException:
    """An exception worded like a native failure: ``[api] failed, error code is LLMStatusCode.X, details.``"""
    details = details.rstrip(".")
    return LLMException(f"[{api}] failed, error code is {code}, {details}.", status_code=code)


def raise_param_invalid(message: str) -> NoReturn:
    """A Python-side precondition failure, as ``raise_if_*`` in the real package raises it."""
    raise LLMException(message, status_code=LLMStatusCode.LLM_PARAM_INVALID)


_PARAM_INVALID = LLMStatusCode.LLM_PARAM_INVALID


def raise_if_false(pred: object, message: str, status_code: LLMStatusCode = _PARAM_INVALID) -> None:
    if not pred:
        raise LLMException(message, status_code=status_code)


def raise_if_true(pred: object, message: str, status_code: LLMStatusCode = _PARAM_INVALID) -> None:
    if pred:
        raise LLMException(message, status_code=status_code)
