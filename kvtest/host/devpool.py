"""A pool of the NPUs on one host, shared by every kvtest process on it.

Each process that needs a device claims one: the claim is an OS file lock on ``npu-<id>.lock`` in
the pool directory (``KVTEST_DEVICE_POOL_DIR``, else ``<tmp>/kvtest-devices``). So several p/d
pairs and pytest-xdist lanes on an 8-NPU host never share a device, and a holder that crashes
releases its claim with its file descriptors: nothing is left to clean up by hand.

Claims are keyed by *physical* id, the one name a device has for every process of the host whatever
its ``ASCEND_RT_VISIBLE_DEVICES``; :func:`claim_visible` hands the claimer the *logical* id it passes
to ``torch.npu.set_device`` (see :mod:`kvtest.host.devices`).

A side file ``npu-<id>.owner`` records who holds the claim (pid, host, since) for error messages
only; a stale one left by a crash is never trusted.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import filelock

from kvtest.host import devices
from kvtest.host.problems import EnvironmentProblem

__all__ = [
    "DEFAULT_TIMEOUT",
    "DeviceClaim",
    "DevicePool",
    "DevicePoolError",
    "claim_visible",
    "default_pool_dir",
]

DEFAULT_TIMEOUT = 60.0


class DevicePoolError(EnvironmentProblem):
    """No device could be claimed; the message names the devices, who holds them and what to do."""


def default_pool_dir() -> Path:
    """``KVTEST_DEVICE_POOL_DIR`` when set, else ``<tmp>/kvtest-devices``."""
    configured = os.environ.get("KVTEST_DEVICE_POOL_DIR")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "kvtest-devices"


class DeviceClaim:
    """One claimed device. Release it with :meth:`release` or by leaving the ``with`` block.

    Releasing twice does nothing; a claim dropped without release ends when the process exits.
    """

    def __init__(self, device_id: int, lock: filelock.BaseFileLock, owner_file: Path) -> None:
        self.device_id = device_id
        self._lock = lock
        self._owner_file = owner_file

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        try:
            self._owner_file.unlink()
        except OSError:
            pass
        self._lock.release(force=True)

    def __enter__(self) -> DeviceClaim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"DeviceClaim(device_id={self.device_id}, held={self.held})"


class DevicePool:
    """The devices ``device_ids`` of this host, claimed through lock files in ``directory``.

    :param device_ids: the physical ids this pool locks, tried in this order.
    :param directory: the lock directory shared by every process of the host (created if missing).
    """

    def __init__(self, device_ids: Iterable[int], directory: str | os.PathLike[str] | None = None) -> None:
        self.device_ids: tuple[int, ...] = tuple(dict.fromkeys(int(d) for d in device_ids))
        self.directory = Path(directory) if directory is not None else default_pool_dir()

    def _paths(self, device_id: int) -> tuple[Path, Path]:
        return self.directory / f"npu-{device_id}.lock", self.directory / f"npu-{device_id}.owner"

    def _try(self, device_id: int) -> DeviceClaim | None:
        lock_path, owner_path = self._paths(device_id)
        lock = filelock.FileLock(str(lock_path), timeout=0, thread_local=False)
        try:
            lock.acquire()
        except filelock.Timeout:
            return None
        try:
            owner_path.write_text(
                f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}"
            )
        except OSError:
            pass
        return DeviceClaim(device_id, lock, owner_path)

    def _holder(self, device_id: int) -> str:
        try:
            return self._paths(device_id)[1].read_text().strip() or "unknown holder"
        except OSError:
            return "unknown holder"

    def claim(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        prefer: Sequence[int] = (),
        poll_interval: float = 0.1,
    ) -> DeviceClaim:
        """Claim one free device, waiting up to ``timeout`` seconds for one to come free.

        :param prefer: ids to try first (e.g. the ``--device-id`` the user asked for).
        :raises DevicePoolError: when the pool is empty or every device stays held past the deadline.
        """
        if not self.device_ids:
            raise DevicePoolError(
                "no NPU to claim: the pool is empty (no /dev/davinciN visible); "
                "check the driver with npu-smi info and ASCEND_RT_VISIBLE_DEVICES"
            )
        unknown = [d for d in prefer if d not in self.device_ids]
        if unknown:
            raise DevicePoolError(f"preferred NPU {unknown} not in the pool {list(self.device_ids)}")
        self.directory.mkdir(parents=True, exist_ok=True)
        order = list(dict.fromkeys([*prefer, *self.device_ids]))
        deadline = time.monotonic() + timeout
        while True:
            for device_id in order:
                claim = self._try(device_id)
                if claim is not None:
                    return claim
            if time.monotonic() >= deadline:
                holders = ", ".join(f"npu {d}: {self._holder(d)}" for d in order)
                raise DevicePoolError(
                    f"no free NPU among {order} after {timeout:g}s ({holders}); "
                    f"wait for those runs, give the claim a longer deadline, or use another pool "
                    f"directory than {self.directory} only if those processes really use other devices"
                )
            time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))

    def claim_many(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> list[DeviceClaim]:
        """Claim ``count`` distinct devices (e.g. both ranks of a single-host pair), all or none.

        :raises DevicePoolError: when the pool has fewer than ``count`` devices or they stay held.
        """
        if count > len(self.device_ids):
            raise DevicePoolError(
                f"{count} NPUs needed but the pool has {len(self.device_ids)} ({list(self.device_ids)})"
            )
        deadline = time.monotonic() + timeout
        claims: list[DeviceClaim] = []
        try:
            while len(claims) < count:
                taken = [c.device_id for c in claims]
                rest = DevicePool([d for d in self.device_ids if d not in taken], self.directory)
                claims.append(rest.claim(timeout=max(0.0, deadline - time.monotonic())))
        except DevicePoolError:
            for claim in claims:
                claim.release()
            raise
        return claims

    def free(self) -> list[int]:
        """Ids no process holds right now (a snapshot: another process may claim one next)."""
        result = []
        for device_id in self.device_ids:
            claim = self._try(device_id) if self.directory.is_dir() else None
            if claim is not None or not self.directory.is_dir():
                result.append(device_id)
            if claim is not None:
                claim.release()
        return result


def claim_visible(
    timeout: float = DEFAULT_TIMEOUT, directory: str | os.PathLike[str] | None = None
) -> tuple[int, DeviceClaim]:
    """Claim one of the NPUs this process can use; return its *logical* id and the claim.

    The lock is the physical device's, so processes with different ``ASCEND_RT_VISIBLE_DEVICES``
    still never share a device.

    :raises DevicePoolError: when no device is visible, ``ASCEND_RT_VISIBLE_DEVICES`` is wrong, or
        every visible device stays held past ``timeout``.
    """
    try:
        mapping = devices.device_map()
    except devices.DeviceError as exc:
        raise DevicePoolError(str(exc)) from None
    claim = DevicePool(mapping.values(), directory).claim(timeout=timeout)
    logical = next(n for n, physical in mapping.items() if physical == claim.device_id)
    return logical, claim
