"""What a sim instance runs with, built once where the sim is configured: :class:`SimContext`.

The drop-in entries are the only code of the sim that reads the environment:

- :func:`configure` (kvtest's fixtures call it before each test, through ``SimBackend.bind``) builds
  the context from the plane it is given plus ``KVTEST_SIM_FAULT`` / ``KVTEST_SIM_FAULT_SCOPE`` (with
  the running test, ``PYTEST_CURRENT_TEST``) and ``KVTEST_SIM_FIXED``, and binds it to the process;
- a program that never calls it (a vendor sample under ``kvtest run``) gets the context
  :func:`from_environment` builds at each ``LLMDataDist.init``, plane included (``KVTEST_SIM_STORE``,
  ``KVTEST_SIM_NAMESPACE``, ``KVTEST_SIM_ROLE``), so a process may move to another namespace between
  instances.

``LLMDataDist.init`` looks its context up in one place, :func:`current`; :func:`bind` hands one over
explicitly (no environment needed). Nothing below the entry reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvtest.backends.sim import control
from kvtest.backends.sim.faults import Fault, fault_from_env
from kvtest.backends.sim.upstream import ENV_VAR as FIXED_VAR
from kvtest.backends.sim.upstream import fixed_from_env

if TYPE_CHECKING:
    from torch.distributed import Store

__all__ = ["SimConfigError", "SimContext", "bind", "configure", "current", "from_environment"]


class SimConfigError(ValueError):
    """A sim setting from the environment that cannot be used; the message names it and the fix."""


@dataclass(frozen=True)
class SimContext:
    """Everything a sim instance needs from outside: where it meets its peers, what goes wrong on
    purpose, and which known upstream bugs behave as fixed."""

    #: the run's control plane (store, namespace, this process's role)
    plane: control.ControlPlane
    #: the injected faults that apply in this process's test (the seam matches roles and apis)
    faults: tuple[Fault, ...] = ()
    #: ids of known upstream issues emulated as fixed (:data:`kvtest.backends.sim.upstream.REPRODUCED`)
    fixed: frozenset[str] = frozenset()


def _settings(plane: control.ControlPlane, env: Mapping[str, str]) -> SimContext:
    faults = fault_from_env(env)  # ValueError in kvtest.backends.sim.faults' words
    try:
        fixed = fixed_from_env(env)
    except ValueError as exc:
        raise SimConfigError(f"{FIXED_VAR}: {exc}") from None
    return SimContext(plane, faults, fixed)


def from_environment(env: Mapping[str, str], plane: control.ControlPlane | None = None) -> SimContext | None:
    """The context ``env`` describes, on ``plane`` (None: the plane ``env`` names; None when it names none).

    :raises control.ControlPlaneError: the store ``env`` names cannot be used.
    :raises SimConfigError: ``KVTEST_SIM_FIXED`` names an issue the sim does not reproduce.
    :raises ValueError: ``KVTEST_SIM_FAULT`` or ``KVTEST_SIM_FAULT_SCOPE`` is malformed.
    """
    if plane is None:
        plane = control.from_environment(env)
        if plane is None:
            return None
    return _settings(plane, env)


_bound: SimContext | None = None


def bind(context: SimContext | None) -> None:
    """Make ``context`` the one every later ``LLMDataDist.init`` of this process uses (None: unbind,
    so init builds it from the environment again)."""
    global _bound
    _bound = context


def current() -> SimContext | None:
    """The context an ``LLMDataDist.init`` starts with: the bound one, else the environment's, else None."""
    if _bound is not None:
        return _bound
    return from_environment(os.environ)


def configure(store: Store, namespace: str, role: str) -> None:
    """Attach this process to the run's control plane; the fixtures call it before each test.

    The faults and fixes come from the environment now, once: a later change of it does not reach an
    instance initialised on this context.

    :param store: a torch.distributed store (TCPStore, FileStore, HashStore) shared by every process.
    :param namespace: a prefix unique to this run and test; nothing outside it is read or written.
    :param role: this process's role name, e.g. ``"p0"`` or ``"d1"`` (also matched by fault injection).
    """
    from torch.distributed import Store

    if not isinstance(store, Store):
        raise TypeError(f"store only support [torch.distributed.Store], but got {type(store).__name__}")
    if not isinstance(namespace, str) or not namespace:
        raise ValueError(f"namespace must be a non-empty str, but got {namespace!r}")
    if not isinstance(role, str) or not role:
        raise ValueError(f"role must be a non-empty str, but got {role!r}")
    bind(_settings(control.ControlPlane(store, namespace, role), os.environ))
