"""kvtest: LLM-DataDist KV-cache transfer samples as parametrized, byte-checked pytest tests."""

from __future__ import annotations

import importlib.metadata
import os

from kvtest.host.torchenv import protect_torch_import

# torch.distributed's store logs a warning line for every wait that times out; kvtest waits in short
# slices (to watch heartbeats between them), so keep c10's log to errors unless the user chose a level.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
# A torch_npu installed without CANN makes a plain `import torch` fail through device-backend
# autoload; the plugin imports torch, so this runs before anything else of kvtest.
protect_torch_import()

try:
    __version__ = importlib.metadata.version("kvtest")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["__version__"]
