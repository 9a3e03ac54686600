"""kvtest: LLM-DataDist KV-cache transfer samples as parametrized, byte-checked pytest tests."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
