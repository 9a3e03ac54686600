"""kvtest: LLM-DataDist KV-cache transfer samples as parametrized, byte-checked pytest tests."""

from __future__ import annotations

import os

# torch.distributed's store logs a warning line for every wait that times out; kvtest waits in short
# slices (to watch heartbeats between them), so keep c10's log to errors unless the user chose a level.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


def _protect_torch_import() -> None:
    # A torch_npu installed without CANN makes a plain `import torch` fail through device-backend
    # autoload; the plugin imports torch, so this must run before anything else of kvtest.
    from kvtest.backends.npu import protect_torch_import

    protect_torch_import()


_protect_torch_import()

__version__ = "0.1.0"
__all__ = ["__version__"]
