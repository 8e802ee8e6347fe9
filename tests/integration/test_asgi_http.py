"""ASGI 3.0 HTTP (spec 2.x) as an app and a client see it, through the real server process: the
connection scope, receive() and send() with streaming and flow control, app misbehaviour, the
connection (keep-alive, pipelining, shutdown), and asyncio features apps rely on.

The server under test is Fulmen, or Uvicorn with FULMEN_TEST_ASGI_SERVER=uvicorn (conftest.py):
the expectations are checked against Uvicorn, the reference for "what ASGI users expect". Where
Uvicorn departs from the spec the test follows the spec and says so (xfail on Uvicorn).

Apps: apps/asgi_scope.py (echoes the scope) and apps/asgi_probe.py (one behaviour per path).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time

import pytest

from conftest import ASGI_SERVER, asgi_command, fulmen_env
from rawhttp import (MiB, chunked, connect, exchange, get, in_parallel, Incomplete, post, Reader,
                     request_bytes, rss_growth, rss_kib, upload, wait_until)

ON_UVICORN = ASGI_SERVER == "uvicorn"


@pytest.fixture
def probe(shared_asgi_server):
    return shared_asgi_server("asgi_probe:app")


@pytest.fixture
def scope_srv(shared_asgi_server):
    return shared_asgi_server("asgi_scope:app")


def decode(value):
    """Undoes asgi_scope.encode: {"bytes": ...} -> bytes, {"tuple": [...]} -> tuple."""
    if isinstance(value, dict):
        if set(value) == {"bytes"}:
            return value["bytes"].encode("latin-1")
        if set(value) == {"tuple"}:
            return tuple(decode(v) for v in value["tuple"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def scope_of(port: int, raw: bytes) -> dict:
    r = exchange(port, raw)
    assert r.status == 200, r.body
    return decode(json.loads(r.body))


def read_json_state(path, timeout: float = 15):
    assert wait_until(path.exists, timeout=timeout), f"{path.name} was not written"
    return json.loads(path.read_text())


# ---- the connection scope -------------------------------------------------------------------------


def test_scope_keys_and_types(scope_srv):
    raw = (b"POST /caf%C3%A9/x%20y?q=%C3%A9&r=a+b HTTP/1.1\r\n"
           b"Host: example.test:8080\r\n"
           b"Content-Type: application/x-www-form-urlencoded\r\n"
           b"Content-Length: 3\r\n"
           b"X-Dup: one\r\n"
           b"x-dup: two\r\n"
           b"X-Mixed-CASE: Value Keeps Case\r\n"
           b"X-Dup: three\r\n"
           b"X-Latin: caf\xe9\r\n\r\n"
           b"a=1")
    with connect(scope_srv.port) as sock:
        local = sock.getsockname()
        sock.sendall(raw)
        r = Reader(sock).read_response()
    scope = decode(json.loads(r.body))
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert re.fullmatch(r"2\.\d+", scope["asgi"]["spec_version"]), scope["asgi"]
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "POST"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/caf\u00e9/x y"  # percent-decoded, then UTF-8 decoded
    assert scope["raw_path"] == b"/caf%C3%A9/x%20y"  # as sent, without the query
    assert scope["query_string"] == b"q=%C3%A9&r=a+b"  # raw bytes
    assert scope["root_path"] == ""
    # Lower-cased names, values as sent, in order, repeated fields kept as separate pairs.
    assert [tuple(h) for h in scope["headers"]] == [
        (b"host", b"example.test:8080"),
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"content-length", b"3"),
        (b"x-dup", b"one"),
        (b"x-dup", b"two"),
        (b"x-mixed-case", b"Value Keeps Case"),
        (b"x-dup", b"three"),
        (b"x-latin", b"caf\xe9"),
    ]
    assert list(scope["client"]) == ["127.0.0.1", local[1]]
    assert list(scope["server"]) == ["127.0.0.1", scope_srv.port]
    assert scope["has_state"] is True
    assert scope["body"] == "a=1"


def test_scope_http10_and_other_methods(scope_srv):
    scope = scope_of(scope_srv.port, request_bytes("GET", "/v", version="HTTP/1.0", host=None))
    assert scope["http_version"] == "1.0"
    scope = scope_of(scope_srv.port, request_bytes("PURGE", "/p"))
    assert scope["method"] == "PURGE"
    scope = scope_of(scope_srv.port, request_bytes("OPTIONS", "/o"))
    assert scope["method"] == "OPTIONS"


@pytest.mark.parametrize("target,path,raw_path,query", [
    ("/%ff/%C3%A9", "/\ufffd/\u00e9", b"/%ff/%C3%A9", b""),  # invalid UTF-8 decodes lossily
    ("/%C3%28?x=%ff", "/\ufffd(", b"/%C3%28", b"x=%ff"),  # a broken sequence too
    ("/a%2Fb", "/a/b", b"/a%2Fb", b""),  # raw_path is how an app tells %2F from /
    ("/plain?", "/plain", b"/plain", b""),
    ("/q?a=1&a=2&empty=&flag", "/q", b"/q", b"a=1&a=2&empty=&flag"),
    ("/sp%20ace+plus", "/sp ace+plus", b"/sp%20ace+plus", b""),  # '+' is not a space in a path
])
def test_scope_path_raw_path_and_query(scope_srv, target, path, raw_path, query):
    scope = scope_of(scope_srv.port, get(target))
    assert scope["path"] == path
    assert scope["raw_path"] == raw_path
    assert scope["query_string"] == query
    assert isinstance(scope["path"], str) and isinstance(scope["query_string"], bytes)


def test_scope_root_path(shared_asgi_server):
    # Choice: only what the two servers agree on is asserted. Uvicorn prefixes path with
    # --root-path (the proxy stripped it: /x arrives, path is /mount/x); a server that receives
    # the prefix may keep path as sent. Either way path starts with root_path (ASGI: path is the
    # full path, root_path the part the app is mounted at).
    srv = shared_asgi_server("asgi_scope:app", root_path="/mount")
    scope = scope_of(srv.port, get("/mount/x?y=1"))
    assert scope["root_path"] == "/mount"
    assert scope["path"].startswith("/mount/") and scope["path"].endswith("/x")
    assert scope["query_string"] == b"y=1"


def test_scope_state_is_a_shallow_copy_per_request(server_for_state):
    srv = server_for_state
    first = scope_of(srv.port, get("/first"))
    assert first["state"]["started"] is True  # what the lifespan startup put there
    assert first["state"]["leak"] is None
    # The app set state["leak"] in the first request: the next request has its own copy ...
    second = scope_of(srv.port, get("/second"))
    assert second["state"]["leak"] is None
    assert second["state"]["started"] is True
    assert set(second["state"]["keys"]) == {"started", "shared"}
    # ... but a shallow one: the list the lifespan made is the same object in every copy.
    assert second["state"]["shared"] == ["/first"]


@pytest.fixture
def server_for_state(asgi_server):
    return asgi_server("asgi_scope:app")  # its own process: the state must start empty


@pytest.mark.xfail(ON_UVICORN, strict=True, reason="Uvicorn sets no scope['extensions'] (optional in the spec)")
def test_scope_extensions_is_a_dict(scope_srv):
    scope = scope_of(scope_srv.port, get("/ext"))
    assert isinstance(scope.get("extensions"), dict), scope.get("extensions")


def test_scope_headers_of_each_request_on_a_connection(scope_srv):
    with connect(scope_srv.port) as sock:
        reader = Reader(sock)
        for i in range(3):
            sock.sendall(get(f"/n{i}", headers=[("X-Req", str(i))]))
            scope = decode(json.loads(reader.read_response().body))
            assert scope["path"] == f"/n{i}"
            assert [v for k, v in scope["headers"] if k == b"x-req"] == [str(i).encode()]


# ---- receive() ------------------------------------------------------------------------------------


def test_receive_without_body(probe):
    r = exchange(probe.port, get("/messages"))
    msgs = json.loads(r.body)["messages"]
    assert len(msgs) == 1
    assert msgs[0]["type"] == "http.request" and msgs[0]["len"] == 0
    assert msgs[0]["more_body"] in (False, "absent")  # more_body defaults to False


def test_receive_content_length_body(probe):
    body = os.urandom(100_000)
    r = exchange(probe.port, post("/messages", body))
    got = json.loads(r.body)
    msgs = got["messages"]
    assert got["sha256"] == hashlib.sha256(body).hexdigest()
    assert all(m["type"] == "http.request" and m["body_type"] == "bytes" for m in msgs)
    assert [m["more_body"] for m in msgs] == [True] * (len(msgs) - 1) + [False]
    assert sum(m["len"] for m in msgs) == len(body)


def test_receive_chunked_body_sent_in_pieces(probe):
    parts = [b"a" * 10, b"b" * 5000, b"c", b"d" * 70_000]
    with connect(probe.port) as sock:
        sock.sendall(request_bytes("POST", "/messages", [("Transfer-Encoding", "chunked")]))
        for p in parts:
            sock.sendall(b"%x\r\n%s\r\n" % (len(p), p))
        sock.sendall(b"0\r\nX-Trailer: ignored\r\n\r\n")
        reader = Reader(sock)
        got = json.loads(reader.read_response().body)
        # The connection stays in sync after the trailers.
        sock.sendall(get("/hello"))
        assert reader.read_response().body == b"hello asgi"
    msgs = got["messages"]
    assert got["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    assert all(m["type"] == "http.request" for m in msgs)
    assert [m["more_body"] for m in msgs] == [True] * (len(msgs) - 1) + [False]


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_100_mib_upload_is_streamed_to_the_app(shared_asgi_server, framing):
    srv = shared_asgi_server("asgi_probe:app", access_log=False)
    exchange(srv.port, get("/hello"))  # warm up, so the baseline includes a served request
    with rss_growth(srv.proc.pid) as growth:
        r, digest = upload(srv.port, "/hash-body", framing)
    assert r.status == 200
    got = json.loads(r.body)
    assert (got["sha256"], got["length"]) == (digest, 100 * MiB)
    assert got["messages"] > 10, got  # streamed in many http.request messages, not one
    assert got["largest"] <= 16 * MiB, got
    assert growth.kib < 30 * 1024, growth


def test_http_disconnect_when_the_client_goes_away_mid_body(probe, tmp_path):
    state = tmp_path / "seen"
    with connect(probe.port) as sock:
        sock.sendall(request_bytes("POST", f"/wait-disconnect?state={state}", [("Content-Length", "1000")],
                                   b"only ten b"))
        assert wait_until(lambda: (tmp_path / "seen.started").exists()), "the app did not start"
    seen = read_json_state(state)
    assert seen[-1] == "http.disconnect"
    assert set(seen[:-1]) <= {"http.request"}


def test_http_disconnect_when_the_client_goes_away_after_the_body(probe, tmp_path):
    state = tmp_path / "seen"
    with connect(probe.port) as sock:
        sock.sendall(post(f"/wait-disconnect?state={state}", b"whole body"))
        assert wait_until(lambda: (tmp_path / "seen.body-done").exists()), "the app did not read the body"
        assert not state.exists()  # still waiting: nothing told it the client left yet
    seen = read_json_state(state)
    assert seen[-1] == "http.disconnect" and seen[0] == "http.request"


def test_receive_after_the_response_returns_http_disconnect(probe, tmp_path):
    state = tmp_path / "after"
    with connect(probe.port) as sock:
        reader = Reader(sock)
        sock.sendall(post(f"/after-response?state={state}", b"body"))
        assert reader.read_response().body == b"done"
        # The connection is still open (keep-alive), yet receive() must not hang: the request is over.
        assert wait_until(state.exists, timeout=15)
        assert state.read_text() == "http.disconnect"
        sock.sendall(get("/hello"))
        assert reader.read_response().body == b"hello asgi"


# ---- send() ---------------------------------------------------------------------------------------


def test_start_and_body(probe):
    with connect(probe.port) as sock:
        reader = Reader(sock)
        sock.sendall(get("/hello"))
        r = reader.read_response()
        assert (r.status, r.body) == (200, b"hello asgi")
        assert r.header("content-length") == "10" and r.header("transfer-encoding") is None
        assert r.header("content-type") == "text/plain"
        assert r.header("date")
        sock.sendall(get("/hello"))  # persistent
        assert reader.read_response().status == 200


def test_streaming_without_length_is_chunked(probe):
    with connect(probe.port) as sock:
        reader = Reader(sock)
        sock.sendall(get("/stream?n=5"))
        r = reader.read_response()
        assert r.header("transfer-encoding") == "chunked" and r.header("content-length") is None
        assert r.chunks == [b"part%d;" % i for i in range(5)]  # one chunk per non-empty body message
        assert r.trailers == []
        sock.sendall(get("/stream?n=1"))
        assert reader.read_response().body == b"part0;"


def test_streamed_parts_go_out_as_they_are_sent(probe, tmp_path):
    gate = tmp_path / "gate"
    with connect(probe.port, timeout=20) as sock:
        sock.sendall(get(f"/stream-gated?gate={gate}"))
        reader = Reader(sock)
        head = reader.read_head()
        assert head.status == 200
        # The app is now waiting for the gate: the first part must reach us anyway.
        while b"first;" not in reader.buf:
            assert reader._fill(), "EOF before the first part"
        gate.write_text("open")
        while not reader.buf.endswith(b"0\r\n\r\n"):
            assert reader._fill(), "EOF before the end of the response"
        assert reader.buf == b"6\r\nfirst;\r\n6\r\nsecond\r\n0\r\n\r\n"


def test_content_length_across_several_body_messages(probe):
    with connect(probe.port) as sock:
        reader = Reader(sock)
        sock.sendall(get("/cl-parts"))
        r = reader.read_response()
        assert r.header("content-length") == "10" and r.header("transfer-encoding") is None
        assert r.body == b"abcdefghij"
        sock.sendall(get("/hello"))  # exactly 10 bytes went out: framing intact
        assert reader.read_response().body == b"hello asgi"


@pytest.mark.parametrize("status", [200, 204, 304])
def test_empty_body_message(probe, status):
    with connect(probe.port) as sock:
        reader = Reader(sock)
        sock.sendall(get(f"/empty-body?status={status}"))
        r = reader.read_response()
        assert (r.status, r.body) == (status, b"")
        if status != 200:
            assert r.header("transfer-encoding") is None  # no body at all for 204 and 304
        sock.sendall(get("/hello"))
        assert reader.read_response().body == b"hello asgi"


def test_large_response_to_a_slow_reader_blocks_send(shared_asgi_server, tmp_path):
    srv = shared_asgi_server("asgi_probe:app", access_log=False)
    state = tmp_path / "produced"
    total = 10 * 16  # 64 KiB parts
    exchange(srv.port, get("/hello"))
    rss_before = rss_kib(srv.proc.pid)
    with connect(srv.port, rcvbuf=65536, timeout=30) as sock:
        sock.sendall(get(f"/big?mib=10&cl=1&state={state}"))
        reader = Reader(sock)
        head = reader.read_head()
        assert head.header("content-length") == str(10 * MiB)

        def produced():
            try:
                return int(state.read_text() or 0)
            except FileNotFoundError:
                return 0

        # Wait until the app stops advancing (send() is blocked on us): it must not have run to
        # the end while we have read almost nothing.
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            now = produced()
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since > 0.5 or now == total:
                break
            time.sleep(0.02)
        assert 0 < last < total * 3 // 4, f"{last} of {total} parts sent before the client read"
        h = hashlib.sha256(reader.buf)
        got = len(reader.buf)
        reader.buf = b""
        while got < 10 * MiB:
            data = sock.recv(65536)
            assert data, f"EOF after {got} bytes"
            got += len(data)
            h.update(data)
        assert h.hexdigest() == hashlib.sha256(b"z" * 10 * MiB).hexdigest()
        assert wait_until(lambda: produced() == total)
    assert rss_kib(srv.proc.pid) - rss_before < 8 * 1024


def test_large_chunked_response(probe, tmp_path):
    r = exchange(probe.port, get(f"/big?mib=3&state={tmp_path / 's'}"), timeout=30)
    assert r.header("transfer-encoding") == "chunked"
    assert r.body == b"z" * 3 * MiB


def test_app_learns_that_the_client_left_mid_stream(probe, tmp_path):
    # Spec 2.3 (Uvicorn): send() after a disconnect is a no-op and receive() gives
    # http.disconnect; spec 2.4 also lets send() raise an OSError subclass. Either must reach the app.
    state = tmp_path / "endless"
    with connect(probe.port, rcvbuf=65536) as sock:
        sock.sendall(get(f"/endless?state={state}"))
        assert Reader(sock).read_head().status == 200
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    got = read_json_state(state, timeout=20)
    assert got["reason"] == "http.disconnect" or got["reason"].startswith("OSError"), got
    assert exchange(probe.port, get("/hello")).status == 200


@pytest.mark.parametrize("nolength", [False, True])
def test_head_has_the_headers_of_get_and_no_body(probe, nolength):
    target = "/head?nolength=1" if nolength else "/head"
    with connect(probe.port) as sock:
        reader = Reader(sock)
        sock.sendall(get(target))
        got = reader.read_response()
        sock.sendall(request_bytes("HEAD", target))
        head = reader.read_response(head_request=True)
        assert head.status == got.status == 200
        ignore = {"date", "transfer-encoding", "x-method"}
        assert ([(k.lower(), v) for k, v in head.headers if k.lower() not in ignore] ==
                [(k.lower(), v) for k, v in got.headers if k.lower() not in ignore])
        assert head.header("x-method") == "HEAD"  # the app saw HEAD (and sent a body anyway)
        if not nolength:
            assert head.header("content-length") == "11"
        sock.sendall(get("/hello"))  # no body bytes followed the HEAD response
        assert reader.read_response().body == b"hello asgi"
        assert reader.buf == b""


def test_expect_100_continue_sent_when_the_app_reads(probe):
    body = b"the body"
    with connect(probe.port) as sock:
        sock.sendall(request_bytes("POST", "/expect?read=1",
                                   [("Content-Length", str(len(body))), ("Expect", "100-continue")]))
        reader = Reader(sock)
        interim = reader.read_response()
        assert (interim.status, interim.version) == (100, "HTTP/1.1")
        sock.sendall(body)
        r = reader.read_response()
        assert (r.status, r.body) == (200, b"got the body")


def test_expect_100_continue_with_chunked_body(probe):
    with connect(probe.port) as sock:
        sock.sendall(request_bytes("POST", "/expect?read=1",
                                   [("Transfer-Encoding", "chunked"), ("Expect", "100-continue")]))
        reader = Reader(sock)
        assert reader.read_response().status == 100
        sock.sendall(chunked(b"chunk", b"ed"))
        assert reader.read_response().body == b"got chunked"


def test_expect_100_continue_not_sent_when_the_app_does_not_read(probe):
    with connect(probe.port) as sock:
        sock.sendall(request_bytes("POST", "/expect", [("Content-Length", "1000"), ("Expect", "100-continue")]))
        r = Reader(sock).read_response()
        # The first thing on the wire is the final answer, not "100 Continue". (What happens to
        # the connection afterwards differs: Uvicorn keeps it, expecting the body or nothing.)
        assert (r.status, r.body) == (403, b"did not read")


@pytest.mark.xfail(ON_UVICORN, strict=True,
                   reason="Uvicorn answers an HTTP/1.0 request with Transfer-Encoding: chunked (RFC 9112 7: "
                          "a server MUST NOT send chunked to a 1.0 client)")
def test_http10_streaming_response_is_close_delimited(probe):
    with connect(probe.port) as sock:
        sock.sendall(request_bytes("GET", "/stream?n=3", version="HTTP/1.0", host=None))
        reader = Reader(sock)
        r = reader.read_response()
        assert r.header("transfer-encoding") is None
        assert r.body == b"part0;part1;part2;"
        assert reader.eof


# ---- app errors (Uvicorn's behaviour) -------------------------------------------------------------


@pytest.fixture
def errors_srv(shared_asgi_server):
    # A long keep-alive timeout, so "the connection closes" means the server closed it because
    # of the error, not because it went idle.
    return shared_asgi_server("asgi_probe:app", timeout_keep_alive=60)


def test_exception_before_start_is_a_500_and_close(server_errors):
    srv = server_errors
    with connect(srv.port) as sock:
        sock.sendall(get("/raise-before"))
        reader = Reader(sock)
        r = reader.read_response()
        assert r.status == 500
        assert b"asgi probe" not in r.body  # no details leak to the client
        assert reader.read_until_eof() == b""  # and the connection is closed
    assert srv.wait_for_log("RuntimeError: asgi probe: raised before start")
    assert "Traceback" in srv.output
    for _ in range(3):
        assert exchange(srv.port, get("/hello")).status == 200


@pytest.fixture
def server_errors(asgi_server):
    return asgi_server("asgi_probe:app", timeout_keep_alive=60)  # its own process, to read its log


def test_exception_after_start_closes_an_incomplete_chunked_response(server_errors):
    srv = server_errors
    with connect(srv.port) as sock:
        sock.sendall(get("/raise-after"))
        reader = Reader(sock)
        with pytest.raises(Incomplete):
            reader.read_response()
        # The head and the first chunk, then EOF with no terminating chunk: visibly cut.
        assert reader.raw.startswith(b"HTTP/1.1 200 ") and reader.raw.endswith(b"first chunk\r\n")
    assert srv.wait_for_log("RuntimeError: asgi probe: raised after the first chunk")
    assert exchange(srv.port, get("/hello")).status == 200


def test_exception_after_start_closes_a_short_content_length_response(errors_srv):
    with connect(errors_srv.port) as sock:
        sock.sendall(get("/raise-after-cl"))
        reader = Reader(sock)
        with pytest.raises(Incomplete) as e:
            reader.read_response()
        assert e.value.received == b"first chunk"


def test_returning_without_a_response_is_a_500(errors_srv):
    with connect(errors_srv.port) as sock:
        sock.sendall(get("/no-response"))
        reader = Reader(sock)
        r = reader.read_response()
        assert r.status == 500
        assert reader.read_until_eof() == b""


@pytest.mark.parametrize("route,cut_after", [("/return-after-start", None), ("/return-mid-body", b"partial\r\n")])
def test_returning_with_an_incomplete_response_closes(errors_srv, route, cut_after):
    with connect(errors_srv.port) as sock:
        sock.sendall(get(route))
        reader = Reader(sock)
        try:
            r = reader.read_response()
        except Incomplete:
            if cut_after is not None:
                assert reader.raw.endswith(cut_after)
        else:
            # A server that holds the head back until the first body message may still answer 500.
            assert r.status == 500, r
        assert reader.eof or reader.read_until_eof() == b""


# case: (failing step, exception must be a RuntimeError (sequence errors), what the client gets)
#   "500": a 500 response;
#   "refused": a 500, or the connection closed without a byte (Uvicorn marks the response started
#       before it validates status and headers, so it can only close);
#   "cut": a response that never completes (or a 500, when no byte of the head went out yet);
#   "complete": the whole 200 "ok" (then the connection closes, or stays usable).
# In every case but "complete" the connection is then closed.
MISUSE = {
    "duplicate-start": (1, True, "cut"),
    "body-before-start": (0, True, "500"),
    "after-final-body": (2, True, "complete"),
    "start-after-final-body": (2, True, "complete"),
    "unknown-type-before-start": (0, True, "500"),
    "unknown-type-after-start": (1, True, "cut"),
    "status-str": (0, False, "refused"),
    "header-name-str": (0, False, "refused"),
    "header-value-str": (0, False, "refused"),
    "header-value-int": (0, False, "refused"),
    "body-str": (1, False, "cut"),
    "crlf-value": (0, False, "refused"),
    "lf-value": (0, False, "refused"),
    "cr-value": (0, False, "refused"),
    "crlf-name": (0, False, "refused"),
    "body-longer-than-content-length": (1, False, "cut"),
    "body-shorter-than-content-length": (1, False, "cut"),
}


@pytest.mark.parametrize("case", list(MISUSE))
def test_send_misuse_raises_in_the_app(errors_srv, tmp_path, case):
    step, runtime_error, outcome = MISUSE[case]
    state = tmp_path / "misuse"
    with connect(errors_srv.port) as sock:
        sock.sendall(get(f"/misuse?case={case}&state={state}"))
        reader = Reader(sock)
        try:
            r = reader.read_response()
        except Incomplete:
            r = None
        if outcome != "complete":
            if outcome == "500":
                assert r is not None and r.status == 500, reader.raw
            elif outcome == "refused":
                assert (r is None and reader.raw == b"") or (r is not None and r.status == 500), reader.raw
            else:
                assert r is None or r.status == 500, reader.raw
            assert reader.eof or reader.read_until_eof() == b""  # not reused after the app raised
        else:
            assert r is not None and (r.status, r.body) == (200, b"ok"), reader.raw
            # The response was complete before the app raised: the server may close (Uvicorn
            # does) or keep the connection ("raise in the app and/or close", issue 3), but if it
            # keeps it, the connection must still be in sync.
            try:
                sock.sendall(get("/hello"))
                nxt = reader.read_response()
            except (Incomplete, ConnectionResetError, BrokenPipeError):
                pass
            else:
                assert (nxt.status, nxt.body) == (200, b"hello asgi"), reader.raw
    got = read_json_state(state)
    assert got["step"] == step and got["raised"] is not None, got
    assert "Exception" in got["mro"], got  # an ordinary exception, not a BaseException
    if runtime_error:
        assert "RuntimeError" in got["mro"], got
    # Nothing an app puts in a header can split the response (CR/LF/NUL never go out).
    assert b"x-injected" not in reader.raw.lower()
    assert exchange(errors_srv.port, get("/hello")).status == 200


# ---- the connection -------------------------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(probe):
    with connect(probe.port) as sock:
        reader = Reader(sock)
        for i in range(5):
            body = b"request %d" % i
            sock.sendall(post("/echo", body))
            r = reader.read_response()
            assert (r.status, r.body) == (200, body)
            assert r.header("connection") is None


def test_pipelined_requests_are_answered_in_order(probe):
    n = 12
    # The first request is slow: the others wait for it (answers keep the request order).
    raw = get("/sleep?s=0.3") + b"".join(post(f"/echo?i={i}", b"body %d" % i) for i in range(n))
    with connect(probe.port, timeout=20) as sock:
        sock.sendall(raw)
        reader = Reader(sock)
        assert reader.read_response().body == b"slept"
        assert [reader.read_response().body for _ in range(n)] == [b"body %d" % i for i in range(n)]
        sock.sendall(get("/hello"))
        assert reader.read_response().body == b"hello asgi"


def test_pipelined_requests_with_bodies_the_app_does_not_read(probe):
    inner = b"GET /hello HTTP/1.1\r\nHost: smuggled\r\n\r\n"  # looks like a request, is body
    first = request_bytes("POST", "/stream?n=1", [("Content-Length", str(len(inner)))], inner)
    second = request_bytes("POST", "/stream?n=2", [("Transfer-Encoding", "chunked")], chunked(inner[:7], inner[7:]))
    with connect(probe.port) as sock:
        sock.sendall(first + second + get("/stream?n=3"))
        reader = Reader(sock)
        assert [reader.read_response().body for _ in range(3)] == [
            b"part0;", b"part0;part1;", b"part0;part1;part2;"]


def test_concurrent_slow_requests_run_concurrently(probe):
    exchange(probe.port, get("/hello"))
    results, elapsed = in_parallel(lambda _: exchange(probe.port, get("/sleep?s=0.5"), timeout=20).body, 8)
    assert results == [b"slept"] * 8
    assert elapsed < 2.0, f"8 concurrent 0.5 s async sleeps took {elapsed:.2f} s"


def test_idle_keep_alive_connection_is_closed(asgi_server):
    srv = asgi_server("asgi_probe:app", timeout_keep_alive=1)
    with connect(srv.port) as sock:
        reader = Reader(sock)
        sock.sendall(get("/hello"))
        assert reader.read_response().status == 200
        start = time.monotonic()
        assert reader.read_until_eof(timeout=10) == b""
        elapsed = time.monotonic() - start
    assert 0.5 < elapsed < 5, elapsed


def test_graceful_shutdown_lets_a_slow_async_request_finish(asgi_server, asgi_kind, tmp_path):
    srv = asgi_server("asgi_probe:app")
    state = tmp_path / "started"
    idle = connect(srv.port)
    idle_reader = Reader(idle)
    idle.sendall(get("/hello"))
    assert idle_reader.read_response().status == 200
    slow = connect(srv.port, timeout=20)
    slow.sendall(get(f"/sleep?s=1.5&state={state}"))
    assert wait_until(state.exists), "the slow request did not start"
    srv.proc.send_signal(signal.SIGTERM)
    assert idle_reader.read_until_eof(timeout=10) == b""  # idle connections close right away
    idle.close()
    reader = Reader(slow)
    r = reader.read_response()  # the request in flight completes
    assert (r.status, r.body) == (200, b"slept")
    assert r.header("connection") == "close"
    assert reader.read_until_eof() == b""
    slow.close()
    code = srv.proc.wait(15)
    # Uvicorn (>= 0.29) re-raises the signal after its graceful shutdown, so it dies "of" SIGTERM.
    assert code == 0 or (asgi_kind == "uvicorn" and code == -signal.SIGTERM), (code, srv.output)
    with pytest.raises(ConnectionRefusedError):
        connect(srv.port, timeout=5)


def test_graceful_timeout_ends_requests_still_waiting(asgi_server, asgi_kind, tmp_path):
    # Fulmen (issue 3) sends http.disconnect to requests still waiting when the graceful timeout
    # expires; Uvicorn cancels their tasks instead.
    srv = asgi_server("asgi_probe:app", graceful_timeout=1)
    state = tmp_path / "waiting"
    slow = connect(srv.port, timeout=20)
    slow.sendall(get(f"/slow-then-disconnect?state={state}"))
    assert wait_until(lambda: (tmp_path / "waiting.started").exists())
    start = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    code = srv.proc.wait(15)
    elapsed = time.monotonic() - start
    slow.close()
    assert elapsed < 5, f"exited {elapsed:.1f} s after SIGTERM with a graceful timeout of 1 s"
    assert code in (0, -signal.SIGTERM) if asgi_kind == "uvicorn" else code == 0, (code, srv.output)
    assert wait_until(state.exists, timeout=5), "the waiting app was never told"
    assert state.read_text() == ("cancelled" if asgi_kind == "uvicorn" else "http.disconnect")


# ---- what apps do with the event loop -------------------------------------------------------------


def test_contextvars_are_per_request(probe):
    # Each request runs in its own copy of the context: what one request sets is never seen at
    # the start of another, whether they follow each other or overlap.
    def entry(i):
        return json.loads(exchange(probe.port, get(f"/ctx?id=seq{i}&s=0")).body)["entry"]

    assert [entry(i) for i in range(6)] == [None] * 6  # one connection each, in sequence
    with connect(probe.port) as sock:  # in sequence on one connection
        reader = Reader(sock)
        seen = []
        for i in range(4):
            sock.sendall(get(f"/ctx?id=conn{i}&s=0.01"))
            seen.append(json.loads(reader.read_response().body)["entry"])
        assert seen == [None] * 4
    results, _ = in_parallel(lambda i: json.loads(exchange(probe.port, get(f"/ctx?id=r{i}&s=0.2"), timeout=20).body), 6)
    for i, got in enumerate(results):
        # Within a request: kept across awaits, inherited by child tasks (which get a copy) and
        # by asyncio.to_thread.
        assert got == {"entry": None, "after_sleep": f"r{i}", "in_child": f"r{i}", "in_to_thread": f"r{i}",
                       "after_child": f"r{i}"}, got
    assert [entry(i) for i in range(3)] == [None] * 3


def test_current_task_and_running_loop(probe):
    got = json.loads(exchange(probe.port, get("/task")).body)
    assert got["has_task"] and got["same_task_after_await"] and got["in_all_tasks"], got
    assert got["task_loop_is_running_loop"], got
    assert got["sniffio"] == "asyncio"
    assert got["cancelling"] in (0, None)
    # Before Python 3.12 the task's first step is caught from loop.call_soon, and its
    # registration from all_tasks.add, for a moment (asgi.cpp, start_task); the app never sees
    # either stand-in.
    assert got["call_soon_not_shadowed"] and got["add_not_shadowed"], got
    if ASGI_SERVER == "fulmen":
        # One constant name (3.10/3.11 would format "Task-<n>" for every request).
        assert got["name"] == "fulmen.asgi", got
        if sys.version_info >= (3, 12):
            assert got["in_all_tasks_first_step"], got  # 3.12's eager tasks are listed
        else:
            # Registered once the first step did not finish it, as 3.12 does for the WeakSet.
            assert not got["in_all_tasks_first_step"], got


def test_app_patching_all_tasks_add_is_left_alone(probe):
    got = json.loads(exchange(probe.port, get("/patch-all-tasks-add")).body)
    if not got["patched"]:
        pytest.skip("no task registry with an instance __dict__ on this Python")
    try:
        for _ in range(3):  # every task now registers through the patch, at once
            t = json.loads(exchange(probe.port, get("/task")).body)
            assert t["has_task"] and t["in_all_tasks"] and t["in_all_tasks_first_step"], t
    finally:
        after = json.loads(exchange(probe.port, get("/unpatch-all-tasks-add")).body)
    assert after["still_patched"], after
    assert after["calls"] >= 3, after


@pytest.mark.parametrize("wait", ["0", "1"], ids=["done-in-first-step", "waits-once"])
def test_request_task_registration(probe, wait):
    key = f"k{wait}-{time.monotonic_ns()}"
    r = exchange(probe.port, get(f"/registered?wait={wait}&key={key}"))
    assert r.status == 200
    got = json.loads(exchange(probe.port, get(f"/registered-result?key={key}")).body)
    assert got, "the probe's callback did not run"
    if wait == "1":
        # Pending across a wait: registered and listed, on every server and Python version.
        assert got["in_all_tasks"], got
    if wait == "0" and ASGI_SERVER == "fulmen" and sys.version_info < (3, 12):
        # Finished inside its eager first step: never added to the registry (3.12 does the same
        # for its eager tasks; this is the WeakSet work Fulmen saves per request).
        assert got["done"] and not got["in_registry"], got


@pytest.mark.skipif(ASGI_SERVER != "fulmen", reason="Fulmen's own behaviour (as for WSGI apps)")
@pytest.mark.parametrize("exc, code", [("interrupt", 130), ("exit", 4)])
@pytest.mark.parametrize("later", ["0", "1"], ids=["first-step", "after-await"])
def test_keyboard_interrupt_or_system_exit_in_the_app_stops_the_server(asgi_server, exc, code, later):
    srv = asgi_server("asgi_probe:app")
    r = exchange(srv.port, get(f"/interrupt?exc={exc}&later={later}"))
    assert r.status == 500
    assert srv.proc.wait(15) == code, srv.output


def test_app_patching_loop_call_soon_is_left_alone(probe):
    got = json.loads(exchange(probe.port, get("/patch-call-soon")).body)
    if not got["patched"]:
        pytest.skip("this event loop has no instance __dict__ to patch")
    assert got["calls"] >= 1, got
    try:
        for _ in range(3):  # requests while the patch is in place still work, through it
            t = json.loads(exchange(probe.port, get("/task")).body)
            assert t["has_task"] and t["same_task_after_await"], t
    finally:
        after = json.loads(exchange(probe.port, get("/unpatch-call-soon")).body)
    assert after["still_patched"], after
    assert after["calls"] > got["calls"], after


def test_anyio_task_groups_cancel_scopes_and_threads(probe):
    got = json.loads(exchange(probe.port, get("/anyio"), timeout=20).body)
    assert got == {"order": [2, 1, 0], "cancelled": True, "to_thread_other_thread": True, "fail_after": True,
                   "streamed": [0, 1, 2]}


def test_run_in_executor(probe):
    got = json.loads(exchange(probe.port, get("/executor"), timeout=20).body)
    assert got["off_loop"] and got["parallel"], got
    assert got["digest"] == hashlib.sha256(b"x" * 1000).hexdigest()


@pytest.fixture
def tcp_echo():
    class Echo(socketserver.StreamRequestHandler):
        def handle(self):
            line = self.rfile.readline()
            self.wfile.write(line.upper())

    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_app_opens_its_own_connections(probe, tcp_echo):
    results, _ = in_parallel(
        lambda i: exchange(probe.port, post(f"/tcp?port={tcp_echo}", b"hello %d" % i), timeout=20).body, 4)
    assert results == [b"echoed:HELLO %d" % i for i in range(4)]


# ---- the engine/loop designs the benchmark compares (FULMEN_BENCH_ASGI_BRIDGE) ---------------------


@pytest.mark.skipif(ASGI_SERVER != "fulmen", reason="Fulmen's benchmark-only bridges")
@pytest.mark.parametrize("bridge", ["poll", "hop"])
def test_benchmark_bridges_serve_correctly(asgi_server, bridge):
    # The alternatives bench/run.py measures (fulmen-poll, fulmen-hop) must serve exactly as the
    # default does, or their numbers mean nothing: requests on one connection, several at once,
    # a body, a stream, the keep-alive timer, then a clean stop.
    srv = asgi_server("asgi_probe:app", timeout_keep_alive=1, env={"FULMEN_BENCH_ASGI_BRIDGE": bridge})
    with connect(srv.port) as sock:
        reader = Reader(sock)
        for i in range(20):
            sock.sendall(post(f"/echo?i={i}", b"x" * (i * 1000)))
            assert reader.read_response().body == b"x" * (i * 1000)
        sock.sendall(get("/stream?n=4"))
        assert reader.read_response().chunks == [b"part%d;" % i for i in range(4)]
    results, _ = in_parallel(lambda i: exchange(srv.port, get(f"/sleep?s=0.2&i={i}"), timeout=20).status, 8)
    assert results == [200] * 8
    with connect(srv.port) as sock:  # the engine's timers still fire: idle keep-alive closes
        sock.sendall(get("/hello"))
        reader = Reader(sock)
        assert reader.read_response().status == 200
        sock.settimeout(10)
        assert sock.recv(1) == b""
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(15) == 0, srv.output


@pytest.mark.skipif(ASGI_SERVER != "fulmen", reason="Fulmen's benchmark-only bridges")
def test_unknown_benchmark_bridge_is_a_clear_error():
    result = subprocess.run(asgi_command("asgi_probe:app"), env=fulmen_env({"FULMEN_BENCH_ASGI_BRIDGE": "spin"}),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "FULMEN_BENCH_ASGI_BRIDGE=spin" in result.stderr and "reader, poll, hop" in result.stderr, result.stderr
