"""WebSockets for ASGI apps (RFC 6455, ASGI WebSocket spec 2.x) through the real server process:
the opening handshake, the scope, messages (sizes, fragments, UTF-8), the closing handshake in
both directions, denial responses, app errors, limits and protocol errors, pings, --ws off,
shutdown, backpressure both ways, permessage-deflate, and Starlette/FastAPI routes.

The server under test is Fulmen, or Uvicorn with FULMEN_TEST_ASGI_SERVER=uvicorn (conftest.py):
the expectations were checked against Uvicorn (its websockets Sans-I/O implementation). Where
Fulmen deliberately differs, the test branches on asgi_kind and says why.

Clients: the `websockets` library (sync API: a real client, with its own validation), and
wsclient.py's raw-socket client where a library will not send what the test needs (bad
handshakes, unmasked or invalid frames, hand-cut fragments) or hides what it must see (RSV1,
pings it must not answer, a socket that stops reading or writing).

Apps: apps/asgi_ws.py (one behaviour per path; RESULTS read back with GET /results) and
apps/asgi_ws_starlette.py (Starlette and FastAPI routes).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import struct
import threading
import time
import uuid
import zlib

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_client

from rawhttp import MiB, Reader, exchange, in_parallel, rss_growth, wait_until
from rawhttp import connect as raw_connect
from wsclient import (BINARY, CLOSE, CONT, PING, PONG, TEXT, WSConn, accept_for, close_payload, frame,
                      handshake_response, new_key, open_ws, send_until_blocked, upgrade_request)

APP = "asgi_ws:app"


@pytest.fixture
def srv(shared_asgi_server):
    return shared_asgi_server(APP)


def connect(srv, path: str, **kwargs):
    """A websockets client on `path`. No size limit by default (the tests choose the sizes)."""
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("close_timeout", 5)
    kwargs.setdefault("max_size", None)
    return ws_client(f"ws://127.0.0.1:{srv.port}{path}", **kwargs)


def new_id() -> str:
    return uuid.uuid4().hex


def result(srv, key: str):
    """What the app stored under `key` (None: nothing yet), through the same server process."""
    status, _, body = srv.request("GET", f"/results?key={key}")
    assert status == 200, body
    return json.loads(body)["result"]


def wait_result(srv, key: str, done=lambda r: r is not None, timeout: float = 10):
    last = None

    def check():
        nonlocal last
        last = result(srv, key)
        return done(last)

    assert wait_until(check, timeout=timeout), f"the app did not report {key!r} in {timeout}s (last: {last})"
    return last


def closed_with(ws) -> tuple[int, str]:
    """Waits for the connection to end (the next recv() raises); returns the close code and
    reason the client got from the server (1006, "" when the TCP connection ended without one)."""
    with pytest.raises(ConnectionClosed) as e:
        ws.recv(timeout=10)
    rcvd = e.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (1006, "")


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


# ---- the opening handshake (RFC 6455 4.2) ---------------------------------------------------------


def test_handshake_is_101_with_the_accept_key(srv):
    with open_ws(srv.port, "/echo") as ws:  # checks the status and Sec-WebSocket-Accept
        r = ws.response
        assert (r.status, r.version) == (101, "HTTP/1.1")
        assert r.header("upgrade").lower() == "websocket"
        assert "upgrade" in [t.strip().lower() for t in r.header("connection").split(",")]
        assert r.header("sec-websocket-extensions") is None  # none offered, none negotiated
        assert r.header("sec-websocket-protocol") is None
        assert r.header("content-length") is None and r.header("transfer-encoding") is None
        ws.send_text("hi")
        assert ws.recv_message() == (TEXT, b"hi")
        ws.close(1000)
        assert ws.recv_close() == (1000, "")  # the server answers the close with the same code
        assert ws.wait_eof() == b""  # and then closes the TCP connection


def test_accept_key_is_computed_from_the_key():
    # The RFC's own example (4.2.2), so a wrong GUID or hash in the helper cannot hide.
    assert accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("connection,upgrade", [
    ("keep-alive, Upgrade", "websocket"),  # what Firefox sends
    ("upgrade", "WebSocket"),
    ("Upgrade,keep-alive", "WEBSOCKET"),
])
def test_handshake_tokens_are_case_insensitive(srv, connection, upgrade):
    key = new_key()
    r, reader = handshake_response(srv.port, upgrade_request("/echo", key=key, connection=connection,
                                                             upgrade=upgrade))
    with reader.sock:
        assert r.status == 101, (r.status, r.body)
        assert r.header("sec-websocket-accept") == accept_for(key)


@pytest.mark.parametrize("version", ["8", "12", "14"])
def test_handshake_other_version_is_426(srv, asgi_kind, version):
    r, reader = handshake_response(srv.port, upgrade_request("/echo", version=version))
    reader.sock.close()
    if asgi_kind == "uvicorn":
        # Uvicorn (websockets' ServerProtocol) answers 400 without Sec-WebSocket-Version; RFC 6455
        # 4.2.2 asks for 426 with the versions the server supports, which Fulmen sends.
        assert r.status == 400
        return
    assert r.status == 426
    assert r.header("sec-websocket-version") == "13"


@pytest.mark.parametrize("key", [
    "",  # missing
    "not base64 at all!",
    "AAECAwQFBgcICQoLDA0O",  # base64 of 15 bytes
    "AAECAwQFBgcICQoLDA0ODxA=",  # base64 of 17 bytes
], ids=["missing", "not-base64", "15-bytes", "17-bytes"])
def test_handshake_bad_key_is_400(srv, key):
    r, reader = handshake_response(srv.port, upgrade_request("/echo", key=key))
    reader.sock.close()
    assert r.status == 400
    assert r.header("sec-websocket-accept") is None


# ---- the scope --------------------------------------------------------------------------------------


def test_scope(srv):
    key = new_key()
    raw = upgrade_request("/scope/caf%C3%A9/x%20y?q=%C3%A9&r=a+b", key=key, headers=[
        ("Sec-WebSocket-Protocol", "chat, superchat"),
        ("X-Dup", "one"),
        ("Sec-WebSocket-Protocol", "v3"),
        ("X-Mixed-CASE", "Value Keeps Case"),
        ("x-dup", "two"),
    ])
    with raw_connect(srv.port) as sock:  # by hand (not open_ws), to know the client's port
        local = sock.getsockname()
        sock.sendall(raw)
        reader = Reader(sock)
        response = reader.read_response()
        assert response.status == 101
        opcode, data = WSConn(sock, reader, response).recv_message()
    assert opcode == TEXT
    scope = decode(json.loads(data))
    assert scope["type"] == "websocket"
    assert scope["asgi"]["version"] == "3.0"
    assert re.fullmatch(r"2\.\d+", scope["asgi"]["spec_version"]), scope["asgi"]
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/scope/caf\u00e9/x y"  # percent-decoded, then UTF-8 decoded
    assert scope["raw_path"] == b"/scope/caf%C3%A9/x%20y"  # as sent, without the query
    assert scope["query_string"] == b"q=%C3%A9&r=a+b"
    assert scope["root_path"] == ""
    # Every request header, names lower-cased, values as sent, in order, repeats kept.
    assert [tuple(h) for h in scope["headers"]] == [
        (b"host", b"localhost"),
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-key", key.encode()),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-protocol", b"chat, superchat"),
        (b"x-dup", b"one"),
        (b"sec-websocket-protocol", b"v3"),
        (b"x-mixed-case", b"Value Keeps Case"),
        (b"x-dup", b"two"),
    ]
    assert scope["subprotocols"] == ["chat", "superchat", "v3"]  # comma-split, across headers, in order
    assert list(scope["client"]) == ["127.0.0.1", local[1]]
    assert list(scope["server"]) == ["127.0.0.1", srv.port]
    assert scope["state"]["started"] is True  # a copy of what the lifespan startup stored
    assert "websocket.http.response" in scope["extensions"]  # denial responses are supported
    assert scope["first_message"] == {"type": "websocket.connect"}  # the app's first receive()


def test_scope_root_path(shared_asgi_server):
    # As in test_asgi_http.py: only what both servers agree on. Uvicorn prefixes path (and
    # raw_path) with --root-path; a server that receives the prefix may keep the path as sent.
    srv = shared_asgi_server(APP, root_path="/mount")
    with connect(srv, "/mount/scope/x?y=1") as ws:
        scope = decode(json.loads(ws.recv(timeout=10)))
    assert scope["root_path"] == "/mount"
    assert scope["path"].startswith("/mount/") and scope["path"].endswith("/scope/x")
    assert scope["raw_path"].endswith(b"/scope/x")
    assert scope["query_string"] == b"y=1"


def test_scope_without_subprotocols_is_an_empty_list(srv):
    with connect(srv, "/scope") as ws:
        scope = decode(json.loads(ws.recv(timeout=10)))
    assert scope["subprotocols"] == []


# ---- accept and messages --------------------------------------------------------------------------


def test_accept_with_a_subprotocol_and_headers(srv):
    with connect(srv, "/echo?subprotocol=superchat&header=x-custom:yes", subprotocols=["chat", "superchat"]) as ws:
        assert ws.subprotocol == "superchat"  # the client checked it was one it offered
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "superchat"
        assert ws.response.headers["X-Custom"] == "yes"
        ws.send("with a subprotocol")
        assert ws.recv(timeout=10) == "with a subprotocol"


def test_accept_without_a_subprotocol(srv):
    # The client offered some, the app chose none: no Sec-WebSocket-Protocol in the 101.
    with connect(srv, "/echo", subprotocols=["chat"]) as ws:
        assert ws.subprotocol is None
        assert "Sec-WebSocket-Protocol" not in ws.response.headers


SIZES = [0, 1, 125, 126, 127, 65535, 65536, 65537, MiB]  # 7-bit, 16-bit and 64-bit length forms


@pytest.mark.parametrize("kind", ["text", "bytes"])
def test_echo_message_sizes(srv, kind):
    # No compression, so the frames on the wire have exactly these payload lengths both ways.
    with connect(srv, "/echo", compression=None) as ws:
        for size in SIZES:
            data = os.urandom(size)
            message = data.hex()[:size] if kind == "text" else data
            ws.send(message)
            got = ws.recv(timeout=20)
            assert type(got) is type(message), (size, type(got))  # text stays text, bytes stay bytes
            assert got == message, f"{kind} message of {size} bytes came back different"


def test_echo_multibyte_text(srv):
    text = "caf\u00e9 \u20ac \U0001f600 \u4e2d\u6587 " * 1000
    with connect(srv, "/echo") as ws:
        ws.send(text)
        assert ws.recv(timeout=10) == text


@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
def test_fragmented_message_with_a_ping_between_fragments(srv, opcode):
    parts = [b"hello ", b"x" * 70_000, b"", b" world"]  # an empty fragment is legal too
    with open_ws(srv.port, "/echo") as ws:
        ws.send_frame(opcode, parts[0], fin=False)
        # A control frame may come between fragments (RFC 6455 5.4): the server must answer it
        # now, in the middle of the message, before the message is complete.
        ws.send_frame(PING, b"mid-message")
        f = ws.recv_frame()
        assert (f.opcode, f.payload, f.fin) == (PONG, b"mid-message", True)
        for i, part in enumerate(parts[1:], 1):
            ws.send_frame(CONT, part, fin=i == len(parts) - 1)
        assert ws.recv_message() == (opcode, b"".join(parts))  # delivered to the app whole


def test_utf8_split_inside_characters_across_fragments(srv):
    text = "\u00e9\u20ac\U0001f600"  # 2-, 3- and 4-byte characters
    data = text.encode()
    cuts = [b"\xc3", b"\xa9\xe2\x82", b"\xac\xf0\x9f\x98", b"\x80"]  # each cut is inside a character
    assert b"".join(cuts) == data
    with open_ws(srv.port, "/echo") as ws:
        ws.send_frame(TEXT, cuts[0], fin=False)
        for i, part in enumerate(cuts[1:], 1):
            ws.send_frame(CONT, part, fin=i == len(cuts) - 1)
        assert ws.recv_message() == (TEXT, data)


def test_many_connections_at_once(srv):
    def client(i):
        with connect(srv, f"/echo?n={i}") as ws:
            for j in range(20):
                ws.send(f"{i}:{j}")
                assert ws.recv(timeout=10) == f"{i}:{j}"
            return i

    results, _ = in_parallel(client, 8)
    assert results == list(range(8))


# ---- closing ----------------------------------------------------------------------------------------


def test_app_closes_with_code_and_reason(srv):
    with connect(srv, "/close?code=4001&reason=bye") as ws:
        assert closed_with(ws) == (4001, "bye")


def test_client_close_code_reaches_the_app(srv):
    key = new_id()
    with connect(srv, f"/echo?key={key}") as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "hi"
        ws.close(4002, "later")
    got = wait_result(srv, key)
    assert got["type"] == "websocket.disconnect" and got["code"] == 4002
    assert got.get("reason", "later") == "later"  # "reason" is newer in the spec: checked when given


def test_messages_before_the_close_all_reach_the_app(srv):
    # N messages and the close frame in one write: the server must hand the app every message
    # before the disconnect, not drop what was still queued when the close arrived.
    key, n = new_id(), 200
    with open_ws(srv.port, f"/count?key={key}") as ws:
        ws.send(b"".join(frame(TEXT, str(i).encode()) for i in range(n)) + frame(CLOSE, close_payload(4002, "later")))
        assert ws.recv_close()[0] == 4002  # the server answered the close (echoing the code)
    got = wait_result(srv, key)
    assert (got["count"], got["in_order"]) == (n, True), got
    assert got["disconnect"]["code"] == 4002


def test_close_before_accept_is_403(srv):
    with pytest.raises(InvalidStatus) as e:
        connect(srv, "/reject")
    assert e.value.response.status_code == 403


def test_denial_response(srv):
    # websocket.http.response.start/body: the client gets exactly that HTTP response instead of
    # a 101, its body sent in two parts (framed by Content-Length or chunked: either is HTTP).
    r, reader = handshake_response(srv.port, upgrade_request("/deny"))
    with reader.sock:
        assert r.status == 418
        assert r.header("x-denial") == "teapot"
        assert r.header("content-type") == "text/plain"
        assert r.header("sec-websocket-accept") is None
        assert r.body == b"short and stout"


# ---- app errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/return-before-accept", "/raise-before-accept"])
def test_no_accept_is_a_500(srv, route):
    r, reader = handshake_response(srv.port, upgrade_request(route))
    with reader.sock:
        assert r.status == 500
        assert b"asgi_ws" not in r.body  # no details leak to the client
    if route == "/raise-before-accept":
        assert srv.wait_for_log("RuntimeError: asgi_ws: raised before accept")


def test_raise_after_accept_ends_the_connection(srv):
    # Fulmen sends a close frame 1011 (internal error); Uvicorn drops the TCP connection, which
    # the client reports as 1006. Either way the client must learn promptly.
    with connect(srv, "/raise-after-accept") as ws:
        start = time.monotonic()
        code, _ = closed_with(ws)
        assert code in (1011, 1006)
        assert time.monotonic() - start < 5
    assert srv.wait_for_log("RuntimeError: asgi_ws: raised after accept")


def test_return_after_accept_closes(srv, asgi_kind):
    with connect(srv, "/return-after-accept") as ws:
        code, _ = closed_with(ws)
    if asgi_kind == "uvicorn":
        # Uvicorn just closes the TCP connection when the app returns (no close frame: 1006).
        assert code == 1006
    else:
        # Fulmen completes the closing handshake for the app: a normal closure.
        assert code == 1000


def test_send_after_close_raises(srv):
    key = new_id()
    with connect(srv, f"/send-after-close?key={key}") as ws:
        assert closed_with(ws)[0] == 4000
    got = wait_result(srv, key)
    assert got["error"] is not None, "send() after websocket.close returned normally"


def test_send_after_the_client_disconnected_raises_oserror(srv):
    key = new_id()
    with connect(srv, f"/send-after-disconnect?key={key}") as ws:
        ws.close(1000)
    got = wait_result(srv, key)
    assert got["disconnect"]["type"] == "websocket.disconnect"
    # ASGI spec 2.4: send() on a closed connection raises a server-specific subclass of OSError.
    assert got["error"] is not None and got["oserror"], got


# ---- limits and protocol errors --------------------------------------------------------------------


@pytest.fixture
def small_srv(shared_asgi_server):
    return shared_asgi_server(APP, ws_max_size=1024)


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_message_over_max_size_is_1009(small_srv, compression):
    # With deflate the 1025 bytes of "x" are a few bytes on the wire: the limit is on the
    # message, not its compressed form (else a tiny frame could inflate to any size).
    make = os.urandom if compression is None else (lambda n: b"x" * n)
    with connect(small_srv, "/echo", compression=compression) as ws:
        exactly = make(1024)
        ws.send(exactly)
        assert ws.recv(timeout=10) == exactly  # the limit itself is allowed
        ws.send(make(1025))
        assert closed_with(ws)[0] == 1009


def test_fragments_adding_up_over_max_size_are_1009(small_srv):
    with open_ws(small_srv.port, "/echo") as ws:
        ws.send_frame(BINARY, b"a" * 600, fin=False)
        ws.send_frame(CONT, b"b" * 600, fin=True)
        assert ws.recv_close()[0] == 1009


def test_invalid_utf8_text_is_1007(srv):
    with open_ws(srv.port, "/echo") as ws:
        ws.send_frame(TEXT, b"ok so far \xff\xfe")
        assert ws.recv_close()[0] == 1007
        ws.wait_eof()


def test_unmasked_client_frame_is_1002(srv):
    with open_ws(srv.port, "/echo") as ws:
        ws.send_frame(TEXT, b"not masked", masked=False)  # RFC 6455 5.1: the server must close
        assert ws.recv_close()[0] == 1002
        ws.wait_eof()


# ---- pings ------------------------------------------------------------------------------------------


def test_client_ping_gets_a_pong(srv):
    with connect(srv, "/echo", ping_interval=None) as ws:
        pong = ws.ping(b"are you there")  # an Event set when the matching pong arrives
        assert pong.wait(5), "no pong"
        ws.send("after the ping")
        assert ws.recv(timeout=10) == "after the ping"
    with open_ws(srv.port, "/echo") as ws:  # the pong carries the ping's payload
        ws.send_frame(PING, b"\x00\x01payload")
        f = ws.recv_frame()
        assert (f.opcode, f.payload) == (PONG, b"\x00\x01payload")


@pytest.fixture
def ping_srv(shared_asgi_server):
    return shared_asgi_server(APP, ws_ping_interval=0.3, ws_ping_timeout=0.3)


def test_server_pings_close_a_client_that_does_not_answer(ping_srv):
    with open_ws(ping_srv.port, "/echo") as ws:
        start, pings = time.monotonic(), 0
        while True:
            f = ws.recv_frame(timeout=10)
            if f.opcode == CLOSE:
                break
            assert f.opcode == PING, f
            pings += 1  # and never answered
        elapsed = time.monotonic() - start
        # Both servers close with 1011 after ping interval + ping timeout (0.6 s here).
        assert f.close_code()[0] == 1011
        assert pings >= 1
        assert elapsed < 5, elapsed
        ws.wait_eof()


class _PingCounter(logging.Handler):
    """Counts the pings a websockets client received, from its debug log ("< PING ...")."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.pings = 0

    def emit(self, record) -> None:
        if record.getMessage().startswith("< PING"):
            self.pings += 1


def test_server_pings_keep_a_client_that_answers(ping_srv):
    counter = _PingCounter()
    logger = logging.getLogger(f"test_websocket.client.{new_id()}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(counter)
    # The client sends no pings of its own: the server's keep-alive is what is being tested.
    with connect(ping_srv, "/echo", ping_interval=None, logger=logger) as ws:
        assert wait_until(lambda: counter.pings >= 4, timeout=10), f"{counter.pings} pings in 10s"
        ws.send("still open")  # four intervals on, answered pings kept the connection
        assert ws.recv(timeout=10) == "still open"


# ---- server modes and shutdown ---------------------------------------------------------------------


def test_ws_off_serves_an_upgrade_as_plain_http(shared_asgi_server):
    srv = shared_asgi_server(APP, ws="off")
    r = exchange(srv.port, upgrade_request("/scope"))
    assert r.status == 200
    got = json.loads(r.body)
    assert got["type"] == "http"  # the app saw an ordinary request
    assert ["upgrade", "websocket"] in got["headers"]


def test_ws_on_serves_websockets(shared_asgi_server):
    srv = shared_asgi_server(APP, ws="on")
    with connect(srv, "/echo") as ws:
        ws.send("on")
        assert ws.recv(timeout=10) == "on"


def test_shutdown_closes_with_1012(asgi_server, asgi_kind):
    srv = asgi_server(APP, graceful_timeout=10)
    with connect(srv, "/shutdown") as ws:
        assert wait_until(lambda: "asgi_ws: accepted" in srv.stdout), srv.stdout
        srv.proc.send_signal(signal.SIGTERM)
        # 1012 "service restart": the client may reconnect (to this server's replacement).
        assert closed_with(ws)[0] == 1012
    code = srv.proc.wait(15)
    # Uvicorn (>= 0.29) re-raises the signal after its graceful shutdown, so it dies "of" SIGTERM.
    assert code == 0 or (asgi_kind == "uvicorn" and code == -signal.SIGTERM), (code, srv.output)
    srv.stop()  # collects the rest of its output
    # The app's receive() returned websocket.disconnect 1012, so it could clean up and return.
    assert "asgi_ws: websocket.disconnect 1012" in srv.stdout, srv.stdout


# ---- backpressure -----------------------------------------------------------------------------------


def test_slow_client_stalls_the_app_sends(shared_asgi_server):
    srv = shared_asgi_server(APP, access_log=False)
    key, size, count = new_id(), 64 * 1024, 3200  # 200 MiB in 64 KiB messages
    with connect(srv, "/echo") as warm:  # the baseline includes a served connection
        warm.send("warm")
        warm.recv(timeout=10)
    with rss_growth(srv.proc.pid) as growth:
        with open_ws(srv.port, f"/flood?key={key}&size={size}&count={count}", rcvbuf=65536, timeout=30) as ws:
            # Read nothing until the app's send() stops returning: the sends must stall once the
            # socket buffers are full, not queue 200 MiB in the server.
            last, stable_since = -1, time.monotonic()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                now = (result(srv, key) or {"sent": 0})["sent"]
                if now != last:
                    last, stable_since = now, time.monotonic()
                elif time.monotonic() - stable_since > 0.5 or now == count:
                    break
                time.sleep(0.02)
            assert 0 < last < count // 10, f"{last} of {count} sends returned while the client read nothing"
            stalled_at = last
            # Now read everything: all of it, in order, intact, then the app's normal close.
            for i in range(count):
                opcode, data = ws.recv_message(timeout=30)
                assert opcode == BINARY and len(data) == size, (i, opcode, len(data))
                assert struct.unpack("!Q", data[:8])[0] == i, f"message {i} out of order"
            assert ws.recv_close(timeout=30)[0] == 1000
    assert result(srv, key) == {"sent": count, "done": True}
    assert growth.kib < 30 * 1024, (growth, stalled_at)


def test_slow_app_stops_the_server_reading(shared_asgi_server):
    srv = shared_asgi_server(APP, access_log=False)
    key, size = new_id(), 64 * 1024
    filler = b"s" * (size - 8)
    cap = 256 * MiB  # far beyond any socket buffers: reaching it means the server read on regardless
    with open_ws(srv.port, f"/slow-receive?key={key}", sndbuf=65536, timeout=30) as ws:
        wait_result(srv, key)  # accepted, and now not calling receive()
        sock = ws.sock
        messages = 0

        def next_message() -> bytes:
            nonlocal messages
            messages += 1
            return frame(BINARY, struct.pack("!Q", messages - 1) + filler)

        blocked, written, pending = send_until_blocked(sock, next_message, cap)
        assert blocked, f"wrote {written / MiB:.0f} MiB and the server kept reading while the app did not receive()"
        # Let the app receive; the rest goes through, and every message reaches it in order.
        status, _, _ = srv.request("GET", f"/release?key={key}")
        assert status == 200
        sock.settimeout(30)
        sock.sendall(pending)
        ws.close(1000)
        assert ws.recv_close(timeout=30)[0] == 1000
    got = wait_result(srv, key, done=lambda r: r is not None and "count" in r, timeout=30)
    assert (got["count"], got["in_order"], got["bytes"]) == (messages, True, messages * size), (got, messages)
    assert got["disconnect"]["code"] == 1000


def test_ping_flood_from_a_client_that_never_reads_is_bounded(shared_asgi_server, asgi_kind):
    # Every ping asks for a pong. A client that sends pings and never reads the pongs must not make
    # the server queue pongs without bound: once its output is over the high-water mark, the server
    # stops reading, and the client's sends block.
    if asgi_kind == "uvicorn":
        # Uvicorn 0.54 (websockets-sansio) keeps reading and queueing pongs: 64 MiB of pings went
        # in without the socket ever blocking. Fulmen's bound is what this test is for.
        pytest.skip("Uvicorn queues pongs without bound")
    srv = shared_asgi_server(APP, access_log=False)
    ping = frame(PING, b"p" * 125)
    cap = 64 * MiB  # ~500,000 pings: far beyond any socket buffers
    with rss_growth(srv.proc.pid) as growth:
        with open_ws(srv.port, "/echo", rcvbuf=16 * 1024, sndbuf=64 * 1024, timeout=30) as ws:
            blocked, written, _ = send_until_blocked(ws.sock, lambda: ping * 64, cap)
            assert blocked, f"sent {written / MiB:.0f} MiB of pings and the server kept reading them"
    # Only the socket buffers and the server's output queue hold pongs: a few MiB at most.
    assert growth.kib < 16 * 1024, f"server RSS grew {growth.kib} KiB under a ping flood"


# ---- permessage-deflate (RFC 7692) ----------------------------------------------------------------


def test_permessage_deflate_is_negotiated_by_default(srv):
    text = "fulmen websocket compression " * 40_000  # ~1.1 MiB that compresses very well
    with connect(srv, "/echo") as ws:  # websockets offers permessage-deflate by default
        assert ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
        for message in (text, text.encode(), "short", ""):
            ws.send(message)
            assert ws.recv(timeout=20) == message


def test_permessage_deflate_server_compresses(srv):
    # A raw client, to see the server's frame: RSV1 set and the payload really compressed.
    text = b"compress me please " * 5000
    offer = ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")
    with open_ws(srv.port, "/echo", headers=[offer]) as ws:
        assert ws.response.header("sec-websocket-extensions").startswith("permessage-deflate")
        ws.send_text(text)  # uncompressed (RSV1 clear) is allowed even with the extension on
        frames = [ws.recv_frame()]
        while not frames[-1].fin:
            frames.append(ws.recv_frame())
        assert frames[0].opcode == TEXT and frames[0].rsv1
        payload = b"".join(f.payload for f in frames)
        assert len(payload) < len(text) // 10, len(payload)
        assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == text


def test_permessage_deflate_off(shared_asgi_server):
    srv = shared_asgi_server(APP, ws_per_message_deflate=False)
    text = "not compressed " * 1000
    with connect(srv, "/echo") as ws:  # offered by the client, declined by the server
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send(text)
        assert ws.recv(timeout=10) == text


# ---- frameworks -----------------------------------------------------------------------------------


def test_starlette_websocket_route(shared_asgi_server):
    srv = shared_asgi_server("asgi_ws_starlette:app")
    with connect(srv, "/ws/alice?q=1", subprotocols=["echo"]) as ws:
        assert ws.subprotocol == "echo"
        assert json.loads(ws.recv(timeout=10)) == {"name": "alice", "q": "1"}
        ws.send("hi")
        assert ws.recv(timeout=10) == "starlette: hi"
        ws.send(b"abc")
        assert ws.recv(timeout=10) == b"cba"


def test_fastapi_websocket_route(shared_asgi_server):
    srv = shared_asgi_server("asgi_ws_starlette:fastapi_app")
    with connect(srv, "/ws/bob") as ws:
        assert json.loads(ws.recv(timeout=10)) == {"name": "bob", "q": None}
        for text in ("one", "two", "\u00e9t\u00e9"):
            ws.send(text)
            assert ws.recv(timeout=10) == "fastapi: " + text


# ---- regressions from the review ------------------------------------------------------------------
#
# Each of these failed before commit 7065f59 (checked against a build of its parent).


def test_denial_after_the_client_left_closes_the_connection(srv):
    # The app awaits receive() before accepting, which returns only once the client has gone,
    # then denies the handshake (websocket.close). Nobody is left to get the 403, but the server
    # must still close its end: it used to keep the socket in CLOSE_WAIT until shutdown (which
    # then waited the whole graceful timeout for it).
    key = new_id()
    with raw_connect(srv.port) as sock:
        sock.sendall(upgrade_request(f"/deny-after-disconnect?key={key}"))
        wait_result(srv, key)  # the app has the connect and waits in receive()
        sock.shutdown(socket.SHUT_WR)  # the client leaves (its FIN; it still reads)
        start = time.monotonic()
        try:
            data = Reader(sock).read_until_eof(timeout=5)
        except TimeoutError:
            pytest.fail("the server never closed a connection whose denial had nobody to answer")
        except ConnectionResetError:
            data = b""  # an abort (RST) is a close too
        assert time.monotonic() - start < 5
    # Nothing, or a denial nobody reads: never a 101.
    assert data == b"" or data.startswith(b"HTTP/1.1 403"), data[:200]
    got = wait_result(srv, key, done=lambda r: r is not None and (r["closed"] or "error" in r))
    assert got["message"]["type"] == "websocket.disconnect", got
    # Fulmen takes the close quietly (there is nothing left to deny); Uvicorn raises its
    # ClientDisconnected, an OSError, as ASGI allows for a send on a closed connection.
    assert got["closed"] or got.get("oserror"), got


def test_two_sends_paused_at_once_both_complete(srv):
    # gather(send(big), send(big)) to a client that reads nothing yet: both sends wait for the
    # socket to drain. The second used to replace the first's future, which never completed.
    key, size = new_id(), 8 * MiB  # far beyond the socket buffers: the first send pauses
    with open_ws(srv.port, f"/two-sends?key={key}&size={size}", rcvbuf=65536, timeout=30) as ws:
        wait_result(srv, key)  # both sends issued (gather starts them together)
        got = result(srv, key)
        assert len(got["done"]) < 2, "the client read nothing, yet both 8 MiB sends returned"
        # Now read everything: both messages whole, then the app's close (sent after the gather).
        seen = []
        for _ in range(2):
            opcode, data = ws.recv_message(timeout=30)
            assert opcode == BINARY and len(data) == size, (opcode, len(data))
            assert data[8:] == b"t" * (size - 8)
            seen.append(struct.unpack("!Q", data[:8])[0])
        assert sorted(seen) == [0, 1]
        assert ws.recv_close(timeout=10)[0] == 1000, "the gather never finished: a send did not complete"
    assert sorted(result(srv, key)["done"]) == [0, 1]


def test_slow_receiver_keeps_the_read_ahead_bounded(asgi_server, asgi_kind):
    # The read-ahead queue holds at most 32 messages and ~1 MiB. 31 tiny messages then large ones
    # fill it; the app then receives the tiny ones one by one, slowly. Each receive() used to let
    # the server read one more large message (whatever the bytes already queued): 31 x 2 MiB
    # piled up. Now the server stays stopped while the queued bytes are over the bound.
    srv = asgi_server(APP, access_log=False)  # its own process: a clean RSS baseline
    key, tiny, large, big = new_id(), 31, 24, 2 * MiB
    frames = [frame(BINARY, struct.pack("!Q", i)) for i in range(tiny)]
    filler = b"L" * (big - 8)
    frames += [frame(BINARY, struct.pack("!Q", i) + filler) for i in range(tiny, tiny + large)]
    wire = b"".join(frames)
    del frames
    with rss_growth(srv.proc.pid) as growth:
        with open_ws(srv.port, f"/receive-steps?key={key}&first={tiny}&delay=0.05", sndbuf=65536,
                     timeout=60) as ws:
            wait_result(srv, key)  # accepted; not receiving until released
            writer = _Writer(ws.sock, wire)
            # The server reads the 31 tiny messages and about one large one, then stops: the
            # client's writes block (it would have written all 48 MiB within a second otherwise).
            stalled_at = writer.wait_stalled()
            assert stalled_at < len(wire) // 2, f"wrote {stalled_at / MiB:.0f} MiB to an app that receives nothing"
            # The app receives the 31 tiny messages, 50 ms apart, and stops again.
            assert srv.request("GET", f"/release?key={key}")[0] == 200
            wait_result(srv, key, done=lambda r: r["paused"], timeout=20)
            now = writer.wait_stalled()
            # Fulmen reads nothing more (the queued bytes stay over the bound until the large
            # message is received). Uvicorn bounds its read-ahead by messages only and reads a
            # couple more large ones (3 to 5 MiB); before the fix Fulmen read 45 MiB here.
            limit = 8 * MiB if asgi_kind == "uvicorn" else big // 2
            read_on = now - stalled_at
            assert read_on < limit, (f"the server read {read_on / MiB:.1f} MiB more while the app "
                                     f"received {tiny} tiny messages: the read-ahead queue is not bounded")
            # Let it receive the rest: everything arrives, whole and in order.
            assert srv.request("GET", f"/release?key={key}/rest")[0] == 200
            assert writer.join(30), "the client could not send everything once the app received"
            ws.close(1000)
            assert ws.recv_close(timeout=30)[0] == 1000
    got = wait_result(srv, key, done=lambda r: r is not None and "disconnect" in r, timeout=30)
    assert (got["count"], got["in_order"]) == (tiny + large, True), got
    assert got["bytes"] == tiny * 8 + large * big, got
    assert growth.kib < 40 * 1024, f"server RSS grew {growth.kib / 1024:.0f} MiB"


class _Writer:
    """Writes `data` to a socket on a thread, in 64 KiB pieces, counting what the kernel took."""

    def __init__(self, sock, data: bytes) -> None:
        self.sock, self.data, self.written, self.error = sock, memoryview(data), 0, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while self.written < len(self.data):
                self.written += self.sock.send(self.data[self.written:self.written + 65536])
        except OSError as exc:  # the test closed the socket, or the send timed out
            self.error = exc

    def wait_stalled(self, quiet: float = 0.5, timeout: float = 20) -> int:
        """Waits until no byte was written for `quiet` seconds (the peer stopped reading) or
        everything was; returns the bytes written so far."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = self.written
            if not self.thread.is_alive():
                if self.error is None:
                    return now  # all of it: nothing held the client back
                break
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return now
            time.sleep(0.02)
        raise AssertionError(f"the writes never stalled ({self.written / MiB:.1f} MiB written, error {self.error})")

    def join(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive() and self.error is None and self.written == len(self.data)


def test_send_with_both_bytes_and_text_is_a_type_error(srv, asgi_kind):
    # The ASGI spec: exactly one of 'bytes' and 'text' is not None. Fulmen used to send the bytes.
    key = new_id()
    with connect(srv, f"/send-both?key={key}") as ws:
        if asgi_kind == "uvicorn":
            # Uvicorn 0.54 does what Fulmen did: sends the bytes and ignores the text.
            assert ws.recv(timeout=10) == b"b"
            assert closed_with(ws)[0] == 1000
            assert wait_result(srv, key) == {"error": None}
            return
        assert closed_with(ws)[0] == 1000  # nothing sent; the connection goes on (to the app's close)
    got = wait_result(srv, key)
    assert got["error"] == "TypeError", got


def test_a_frame_flood_does_not_starve_other_clients(srv, asgi_kind):
    # Two clients flood empty continuation frames (a message that never ends and never reaches the
    # app's bound) as fast as they can. The server must still serve others: it used to read such a
    # client until its socket was empty, which under a flood was never (an HTTP request waited
    # for the flood to end).
    if asgi_kind == "uvicorn":
        # Uvicorn 0.54 starves too: HTTP requests took 1.5 to 10 s under this flood.
        pytest.skip("Uvicorn does not keep other clients served under a frame flood")
    start_frame = frame(BINARY, b"start", fin=False)
    chunk = frame(CONT, b"", fin=False) * 200_000  # 1.2 MB of 6-byte frames
    stop = threading.Event()
    flooded = [0, 0]

    def flood(ws, i: int) -> None:
        deadline = time.monotonic() + 6  # bounded, whatever happens to the test
        try:
            ws.send(start_frame)
            while not stop.is_set() and time.monotonic() < deadline:
                ws.send(chunk)
                flooded[i] += len(chunk)
        except OSError:
            pass

    with open_ws(srv.port, "/echo") as ws1, open_ws(srv.port, "/echo") as ws2:
        threads = [threading.Thread(target=flood, args=(ws, i), daemon=True) for i, ws in enumerate((ws1, ws2))]
        for thread in threads:
            thread.start()
        try:
            assert wait_until(lambda: sum(flooded) >= 4 * MiB, timeout=5), "the flood did not get going"
            latencies = []
            for _ in range(3):
                t0 = time.monotonic()
                status, _, _ = srv.request("GET", "/results?key=none", timeout=10)
                latencies.append(time.monotonic() - t0)
                assert status == 200
            flooding = all(thread.is_alive() for thread in threads)
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
    assert max(latencies) < 1.0, f"HTTP latencies under a frame flood: {latencies}"
    assert flooding, "the flood ended before the requests did: nothing was measured"
