"""The one-sided link's listen address, made real: a TCPStore server on ``listen_ip_info``.

The client connects to it and reads the server's cluster id, so a closed port or a wrong peer fails
the link the way a real unreachable server does.
"""

from __future__ import annotations

import datetime
import socket
import time

from torch.distributed import TCPStore

IDENTITY_KEY = "kvtest_sim/cluster_id"


class Listener:
    """A listening socket on ``host:port`` that answers with ``cluster_id``; :meth:`close` frees the port."""

    def __init__(self, host: str, port: int, cluster_id: int) -> None:
        self.host = host
        self.port = port
        # Bound to exactly host:port, as a real server is: TCPStore alone would listen on every address.
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._server: TCPStore | None = TCPStore(
            host,
            port,
            is_master=True,
            wait_for_workers=False,
            timeout=datetime.timedelta(seconds=5),
            master_listen_fd=sock.detach(),
        )
        self._server.set(IDENTITY_KEY, str(cluster_id))

    def close(self) -> None:
        self._server = None


def probe(host: str, port: int, deadline: float) -> tuple[int | None, str]:
    """The cluster id the server on ``host:port`` answers with, or None and why not (before ``deadline``)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None, f"link timeout passed before connecting to {host}:{port}"
    try:
        # a plain connect first: a closed port is refused at once instead of retried until the timeout
        with socket.create_connection((host, port), timeout=remaining):
            pass
    except OSError as exc:
        return None, f"cannot connect to {host}:{port}: {exc}"
    remaining = deadline - time.monotonic()
    try:
        client = TCPStore(
            host,
            port,
            is_master=False,
            timeout=datetime.timedelta(seconds=max(remaining, 0.05)),
        )
        if not client.check([IDENTITY_KEY]):
            return None, f"{host}:{port} is not an llm datadist listener"
        return int(client.get(IDENTITY_KEY)), ""
    except Exception as exc:  # noqa: BLE001 - any failure here is a failed link, reported as a code
        return None, f"no answer from {host}:{port}: {exc}"


def connectable(host: str, port: int, deadline: float) -> bool:
    """Whether a TCP connect to ``host:port`` succeeds before ``deadline`` (as a non-forced unlink dials)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    try:
        with socket.create_connection((host, port), timeout=remaining):
            return True
    except OSError:
        return False
