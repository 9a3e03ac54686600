"""The sim's listen socket (kvtest.backends.sim.listener): what a link's probe reads from it, and what it
makes of a port where something else answers."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from kvtest.backends.sim.listener import GREETING, Listener, connectable, probe
from kvtest.node import free_port


def _deadline(seconds: float = 2.0) -> float:
    return time.monotonic() + seconds


def test_a_probe_reads_the_listeners_cluster_id_as_often_as_it_asks() -> None:
    port = free_port("127.0.0.1")
    listener = Listener("127.0.0.1", port, 2**64 - 3)  # cluster ids are uint64
    try:
        for _ in range(3):
            assert probe("127.0.0.1", port, _deadline()) == (2**64 - 3, "")
        assert connectable("127.0.0.1", port, _deadline())
    finally:
        listener.close()


def test_a_closed_listener_frees_its_port_and_is_refused_at_once() -> None:
    port = free_port("127.0.0.1")
    Listener("127.0.0.1", port, 5).close()
    began = time.monotonic()
    cluster, why = probe("127.0.0.1", port, _deadline())
    assert cluster is None and why.startswith(f"cannot connect to 127.0.0.1:{port}")
    assert time.monotonic() - began < 1.0
    again = Listener("127.0.0.1", port, 6)  # the port is free to listen on again
    try:
        assert probe("127.0.0.1", port, _deadline()) == (6, "")
    finally:
        again.close()
    taken = Listener("127.0.0.1", port, 7)
    try:
        with pytest.raises(OSError):  # a port in use cannot be listened on twice
            Listener("127.0.0.1", port, 8)
    finally:
        taken.close()


@pytest.mark.parametrize("says", [b"", b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", GREETING[:5], GREETING + b"\x00\x01"])
def test_something_else_on_the_port_is_not_a_listener(says: bytes) -> None:
    """A server that closes at once, answers in another protocol, or stops short of a cluster id."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(says)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        cluster, why = probe("127.0.0.1", port, _deadline())
        assert cluster is None and why == f"127.0.0.1:{port} is not an llm datadist listener"
    finally:
        thread.join(2.0)
        server.close()


def test_a_server_that_never_answers_is_given_up_on_at_the_deadline() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)  # the kernel accepts; nobody ever writes
    port = server.getsockname()[1]
    try:
        began = time.monotonic()
        cluster, why = probe("127.0.0.1", port, _deadline(0.3))
        assert cluster is None and why.startswith(f"no answer from 127.0.0.1:{port}")
        assert 0.25 < time.monotonic() - began < 1.5
    finally:
        server.close()
