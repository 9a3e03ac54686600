"""The one exception the upstream build raises: a one-line message naming what is wrong and the fix."""

from __future__ import annotations

__all__ = ["UpstreamError"]


class UpstreamError(Exception):
    """Bad input or a failed step; ``str()`` is one line naming the problem and the fix."""
