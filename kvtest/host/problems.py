"""The one base class of every failure kvtest blames on the environment rather than the product.

A test that fails with an :class:`EnvironmentProblem` (or one of kvtest's rendezvous failures that
say the same, see :mod:`kvtest.run.failure`) is classified ``environment`` in the results file, the
JUnit properties, the terminal summary and ``kvtest compare``: a nightly dashboard then does not
bisect a broken cable. Standard library only, like the rest of :mod:`kvtest.host`.
"""

from __future__ import annotations

__all__ = ["EnvironmentProblem"]


class EnvironmentProblem(Exception):
    """The host, its devices or the network cannot run the test; ``str()`` is one line with the fix.

    Subclasses: :class:`kvtest.host.devices.DeviceError` (``hccn_tool`` missing or failing, no device
    IP, ``/etc/hccn.conf`` absent, a device not visible), :class:`kvtest.host.devpool.DevicePoolError`
    (no NPU free), :class:`kvtest.host.linkcheck.DeviceNetworkProblem` (a failed link the device
    network explains), ``kvtest.run.failure.PeerNeverJoined`` (a role never joined the run).
    """
