"""Backend selection: ``--backend auto|npu|sim``. Each backend module is imported only when chosen."""

from __future__ import annotations

from kvtest.backends.protocol import Backend, BackendUnavailable

__all__ = ["Backend", "BackendUnavailable", "BACKEND_CHOICES", "select_backend"]

BACKEND_CHOICES = ("auto", "npu", "sim")


def select_backend(requested: str) -> tuple[Backend, str]:
    """Load the backend ``requested`` names; return it with a one-line reason for the session header.

    ``npu`` never falls back: when it cannot load, :class:`BackendUnavailable` says what is missing.
    ``auto`` takes ``npu`` when llm_datadist and torch_npu import and a device is visible, else ``sim``.
    """
    if requested == "sim":
        from kvtest.backends.sim.backend import load as load_sim

        return load_sim(), "sim requested"
    from kvtest.backends import npu

    if requested == "npu":
        return npu.load(), "npu requested"
    usable, why = npu.probe()
    if usable:
        return npu.load(), f"auto chose npu: {why}"
    from kvtest.backends.sim.backend import load as load_sim

    return load_sim(), f"auto chose sim: npu unusable ({why})"
