"""Behaviour under hostile or unlucky clients and shutdown races (regressions of review findings)."""

from __future__ import annotations

import fcntl
import json
import signal
import socket
import struct
import termios
import time

from rawhttp import connect, exchange, get, Reader, request_bytes, rss_kib, wait_until


def unacked_bytes(sock: socket.socket) -> int:
    """Bytes we sent that the peer's kernel has not acknowledged yet (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def test_requests_already_sent_are_served_during_graceful_stop(server, tmp_path):
    """Clients that connected and sent while the loop was busy are answered, not reset."""
    srv = server("robust:app")
    state = tmp_path / "in-app"
    slow = connect(srv.port, timeout=20)
    slow.sendall(get(f"/sleep?s=1&state={state}"))
    assert wait_until(state.exists)  # the loop thread is inside the app for the next second
    waiting = []
    for _ in range(3):
        s = connect(srv.port, timeout=20)
        s.sendall(get("/"))
        waiting.append(s)
    srv.proc.send_signal(signal.SIGTERM)
    assert Reader(slow).read_response().status == 200
    for s in waiting:
        r = Reader(s).read_response()
        assert r.status == 200 and r.body == b"ok"
        assert r.header("connection") == "close"
    assert srv.proc.wait(15) == 0


def test_pipelined_bodiless_responses_are_not_queued_without_bound(server):
    """A client that pipelines HEAD requests and never reads must meet backpressure, not make the
    server queue every response in memory."""
    srv = server("robust:app", "--no-access-log")
    rss_before = rss_kib(srv.proc.pid)
    sock = connect(srv.port, timeout=1.0, rcvbuf=4096)
    one = request_bytes("HEAD", "/", [])
    batch = one * 2000
    sent = 0
    try:
        deadline = time.monotonic() + 20
        while sent < 40 * 1024 * 1024 and time.monotonic() < deadline:
            sock.sendall(batch)
            sent += len(batch)
    except (socket.timeout, BlockingIOError):
        pass  # the server stopped reading from us: that is the point
    assert sent < 40 * 1024 * 1024, "the server kept reading requests whose answers nobody reads"
    grown_mib = (rss_kib(srv.proc.pid) - rss_before) / 1024
    assert grown_mib < 32, f"server RSS grew {grown_mib:.0f} MiB"
    sock.close()
    assert exchange(srv.port, get("/")).status == 200


def test_slow_chunked_upload_does_not_block_other_clients(server):
    """With --threads 1 a small chunked body is read by the loop before the app runs, so a client
    that stalls in the middle of it holds nobody else up."""
    srv = server("robust:app")
    slow = connect(srv.port, timeout=10)
    slow.sendall(request_bytes("POST", "/", [("Transfer-Encoding", "chunked")]) + b"5\r\nhel")
    assert wait_until(lambda: unacked_bytes(slow) == 0)  # the server has the partial body
    start = time.monotonic()
    assert exchange(srv.port, get("/")).status == 200
    assert time.monotonic() - start < 1.0
    slow.sendall(b"lo\r\n0\r\n\r\n")
    r = Reader(slow).read_response()
    assert r.status == 200 and r.body == b"hello"


def test_malformed_small_chunked_body_is_400_before_the_app(server):
    srv = server("robust:app")
    r = exchange(srv.port, request_bytes("POST", "/", [("Transfer-Encoding", "chunked")]) + b"zz\r\nhello\r\n0\r\n\r\n")
    assert r.status == 400
    assert b"chunk" in r.body


def test_keyboard_interrupt_in_the_app_stops_the_server(server):
    srv = server("robust:app")
    r = exchange(srv.port, get("/keyboard-interrupt"))
    assert r.status == 500
    code = srv.proc.wait(15)
    assert code == 130, srv.output  # the CLI's exit code for an interrupt


def test_identical_duplicate_content_length_is_one_value(server):
    srv = server("robust:app")
    raw = request_bytes("POST", "/environ", [("Content-Length", "2"), ("Content-Length", "2")], b"hi")
    r = exchange(srv.port, raw)
    assert r.status == 200
    assert json.loads(r.body)["CONTENT_LENGTH"] == "2"


def test_interim_status_from_a_wsgi_app_is_an_error(server):
    srv = server("robust:app")
    r = exchange(srv.port, get("/early-hints"))
    assert r.status == 500
    assert srv.wait_for_log("invalid response status")
    assert exchange(srv.port, get("/")).status == 200


def test_stop_during_a_blocked_body_read_is_honoured(server, tmp_path):
    """--threads 1: the app is blocked reading a body the client never finishes (too large to be
    read before the app runs); SIGTERM must still stop the server within the graceful timeout."""
    srv = server("robust:app", "--graceful-timeout", "1")
    state = tmp_path / "in-app"
    slow = connect(srv.port, timeout=20)
    slow.sendall(request_bytes("POST", f"/?state={state}", [("Content-Length", str(1 << 20))]) + b"x" * 100_000)
    assert wait_until(state.exists)  # the app runs, and is about to wait in wsgi.input.read()
    start = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    srv.proc.wait(15)
    assert time.monotonic() - start < 4.0
    slow.close()
