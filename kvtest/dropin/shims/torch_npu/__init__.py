"""``torch_npu`` for programs run by ``kvtest run`` on sim: ``torch.npu`` backed by CPU memory.

torch loads it from ``import torch`` through the ``torch.backends`` entry point, as it loads the real
torch_npu (which is why the vendor samples use ``torch.npu`` without importing torch_npu).
"""

from kvtest.dropin.fakenpu import install

npu = install()

__version__ = "0.0.0+kvtest.shim"


def _autoload() -> None:
    """The ``torch.backends`` entry point: importing this module already installed ``torch.npu``."""


__all__ = ["npu"]
