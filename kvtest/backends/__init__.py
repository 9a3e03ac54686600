"""Backend selection: ``--backend auto|npu|sim``. Each backend module is imported only when chosen."""

from __future__ import annotations

from kvtest.backends.protocol import Backend, BackendUnavailable

__all__ = ["Backend", "BackendUnavailable", "BACKEND_CHOICES", "select_backend"]

BACKEND_CHOICES = ("auto", "npu", "sim")


def shim_note(backend: Backend) -> str:
    """A warning for the header when the npu backend's llm_datadist is kvtest's shim (``kvtest run``)."""
    origin = str(getattr(backend.api, "__file__", "") or "")
    if "/kvtest/dropin/shims/" not in origin.replace("\\", "/"):
        return ""
    return (
        "; RUNNING ON KVTEST'S SHIMS, not Ascend hardware: llm_datadist is the sim, torch_npu, torchair "
        "and hccn_tool are CPU stand-ins"
    )


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
        backend = npu.load()
        return backend, "npu requested" + shim_note(backend)
    usable, why = npu.probe()
    if usable:
        backend = npu.load()
        return backend, f"auto chose npu: {why}" + shim_note(backend)
    from kvtest.backends.sim.backend import load as load_sim

    return load_sim(), f"auto chose sim: npu unusable ({why})"
