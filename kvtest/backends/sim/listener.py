"""The one-sided link's listen address, made real: a listening socket on ``listen_ip_info``.

The client connects to it and reads the server's cluster id, so a closed port or a wrong peer fails
the link the way a real unreachable server does.

Plain sockets, not a ``torch.distributed.TCPStore``: a TCPStore looks up the host name of every
connection's address (``getnameinfo``, both ends), and ``::ffff:127.0.0.1``, the address its IPv6
sockets see on loopback, is in no hosts file, so each lookup goes to DNS. Where a DNS query goes
unanswered (1 in 60 reverse lookups on the project's VM, 2026-12-06), the resolver waits 5 s, TCPStore's
own connect timeout: ``init`` failed with "cannot listen on" and links with ``LLM_LINK_FAILED``, in
20 of 27 full smoke runs that afternoon. This listener answers from memory and names no one.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

#: what a listener sends first, so a client can tell it from any other server on the port
GREETING = b"kvtest-sim-listener/1\n"
_ANSWER = struct.Struct("!Q")


class Listener:
    """A listening socket on ``host:port`` that answers every connection with ``cluster_id``;
    :meth:`close` frees the port."""

    def __init__(self, host: str, port: int, cluster_id: int) -> None:
        self.host = host
        self.port = port
        # Bound to exactly host:port, as a real server is, not to every address.
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._answer = GREETING + _ANSWER.pack(cluster_id & (2**64 - 1))
        self._thread = threading.Thread(target=self._serve, name=f"kvtest-sim-listener-{port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # shut down by close()
                return
            with conn:
                try:
                    conn.settimeout(1.0)
                    conn.sendall(self._answer)
                except OSError:
                    pass  # the client left first (a plain connect probe): nothing to tell it

    def close(self) -> None:
        """Stop answering and free the port (the accept loop ends first, so its socket number is never
        one a later socket was given)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept loop
        except OSError:
            pass
        self._thread.join(2.0)
        self._sock.close()


def probe(host: str, port: int, deadline: float) -> tuple[int | None, str]:
    """The cluster id the server on ``host:port`` answers with, or None and why not (before ``deadline``)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None, f"link timeout passed before connecting to {host}:{port}"
    try:
        conn = socket.create_connection((host, port), timeout=remaining)
    except OSError as exc:  # a closed port is refused at once
        return None, f"cannot connect to {host}:{port}: {exc}"
    want = len(GREETING) + _ANSWER.size
    got = b""
    with conn:
        try:
            while len(got) < want:
                conn.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = conn.recv(want - len(got))
                if not chunk:
                    break
                got += chunk
        except OSError as exc:
            return None, f"no answer from {host}:{port}: {exc}"
    if not got.startswith(GREETING[: len(got)]) or len(got) < want:
        return None, f"{host}:{port} is not an llm datadist listener"
    return int(_ANSWER.unpack(got[len(GREETING) :])[0]), ""


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
