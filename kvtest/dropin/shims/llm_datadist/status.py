"""``llm_datadist.status`` (hicann/hixl src/python/llm_datadist/llm_datadist/status.py)."""

from kvtest.backends.sim.status import LLMException, LLMStatusCode, Status, raise_if_false, raise_if_true

__all__ = ["LLMException", "LLMStatusCode", "Status", "code_2_status", "raise_if_false", "raise_if_true"]


def code_2_status(status: int) -> LLMStatusCode:
    """The status code of a native return value; an unknown one reads LLM_FAILED."""
    try:
        code = LLMStatusCode(status)
    except ValueError:
        return LLMStatusCode.LLM_FAILED
    return LLMStatusCode.LLM_FAILED if code == LLMStatusCode.LLM_UNKNOWN_ERROR else code


# the real package defines these here: tracebacks, reprs and TypeError messages name this module
for _cls in (
    LLMStatusCode,
    LLMException,
    Status,
):
    _cls.__module__ = __name__
