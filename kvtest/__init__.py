"""kvtest: LLM-DataDist KV-cache transfer samples as parametrized, byte-checked pytest tests."""

from __future__ import annotations

import os

# torch.distributed's store logs a warning line for every wait that times out; kvtest waits in short
# slices (to watch heartbeats between them), so keep c10's log to errors unless the user chose a level.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

__version__ = "0.1.0"
__all__ = ["__version__"]
