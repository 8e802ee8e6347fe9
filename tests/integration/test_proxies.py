"""Running behind a proxy, end to end: --limit-concurrency, --proxy-headers with
--forwarded-allow-ips (WSGI environ and ASGI scope, HTTP and WebSocket), --proxy-protocol."""

from __future__ import annotations

import json
import re
import socket
import struct
import time

import pytest

from conftest import Server, run_fulmen
from wsclient import open_ws

XFF = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7", "X-Forwarded-Proto": "https",
       "X-Forwarded-Host": "shop.example:8443"}


def environ(srv: Server, headers: dict | None = None) -> dict:
    status, _, body = srv.request("GET", "/", headers=headers)
    assert status == 200, body
    return json.loads(body)


def asgi_scope(srv: Server, headers: dict | None = None) -> dict:
    status, _, body = srv.request("GET", "/", headers=headers)
    assert status == 200, body
    return json.loads(body)


def tuple_of(value) -> list:
    return value["tuple"] if isinstance(value, dict) else value


# ---- --proxy-headers, WSGI ----------------------------------------------------------------------

ALL_X = "x-forwarded-for,x-forwarded-proto,x-forwarded-host,x-forwarded-port"


def test_wsgi_trusted_proxy_headers(server):
    srv = server("echo_environ:app", "--proxy-headers", "--forwarded-headers", ALL_X)
    env = environ(srv, XFF)
    assert env["REMOTE_ADDR"] == "198.51.100.7"  # the right-most hop not in --forwarded-allow-ips
    assert env["REMOTE_PORT"] == "0"
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTP_HOST"] == "shop.example:8443"
    assert env["SERVER_NAME"] == "shop.example" and env["SERVER_PORT"] == "8443"
    # The access log names the client, not the proxy.
    assert srv._stdout.wait_for(re.compile(r"^198\.51\.100\.7 - - \["), 10), srv.stdout
    # Without proxy headers the same server shows the real peer.
    env = environ(srv)
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["wsgi.url_scheme"] == "http"
    assert env["REMOTE_PORT"] != "0" and env["SERVER_PORT"] == str(srv.port)


def test_wsgi_default_headers_are_x_forwarded_for_and_proto(server):
    # A proxy that sets only these passes the client's own X-Forwarded-Host/-Port and Forwarded
    # through: by default they are not believed.
    srv = server("echo_environ:app", "--proxy-headers")
    env = environ(srv, {**XFF, "X-Forwarded-Port": "8443", "Forwarded": "for=6.6.6.6;proto=http;host=evil.com"})
    assert env["REMOTE_ADDR"] == "198.51.100.7" and env["wsgi.url_scheme"] == "https"
    assert env["HTTP_HOST"].startswith("127.0.0.1") and env["SERVER_NAME"] != "shop.example"
    assert env["SERVER_PORT"] == str(srv.port)


def test_wsgi_forwarded_rfc7239(server):
    srv = server("echo_environ:app", "--proxy-headers", "--forwarded-headers", "Forwarded")
    env = environ(srv, {"Forwarded": 'for="[2001:db8::1]:4711";proto=https;host="api.example"',
                        "X-Forwarded-For": "9.9.9.9"})
    assert env["REMOTE_ADDR"] == "2001:db8::1" and env["REMOTE_PORT"] == "4711"
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTP_HOST"] == "api.example" and env["SERVER_PORT"] == "443"


def test_wsgi_untrusted_peer_is_ignored(server):
    # 127.0.0.1 is not in the list: nothing at all is applied.
    srv = server("echo_environ:app", "--proxy-headers", "--forwarded-allow-ips", "10.0.0.0/8, ::1")
    env = environ(srv, XFF)
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["wsgi.url_scheme"] == "http"
    assert env["HTTP_HOST"].startswith("127.0.0.1") and env["SERVER_PORT"] == str(srv.port)
    assert env["HTTP_X_FORWARDED_FOR"] == XFF["X-Forwarded-For"]  # still visible as a header


def test_wsgi_proxy_headers_off_by_default(server):
    env = environ(server("echo_environ:app"), XFF)
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["wsgi.url_scheme"] == "http"


def test_wsgi_malformed_headers(server):
    srv = server("echo_environ:app", "--proxy-headers")
    # A bad proto is ignored alone: the client address still applies.
    env = environ(srv, {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "gopher"})
    assert env["REMOTE_ADDR"] == "203.0.113.9" and env["wsgi.url_scheme"] == "http"
    # What the client put left of the proxy's hop is never parsed (nginx appends to it).
    env = environ(srv, {"X-Forwarded-For": "foo, 203.0.113.9", "X-Forwarded-Proto": "https"})
    assert env["REMOTE_ADDR"] == "203.0.113.9" and env["wsgi.url_scheme"] == "https"
    # The trusted proxy's own hop malformed: 400, never the proxy's address (127.0.0.1).
    for bad in ("not-an-address", "203.0.113.9, foo"):
        status, headers, body = srv.request("GET", "/", headers={"X-Forwarded-For": bad})
        assert status == 400, (bad, body)
        assert b"proxy headers" in body
    srv2 = server("echo_environ:app", "--proxy-headers", "--forwarded-headers", "forwarded")
    status, _, body = srv2.request("GET", "/", headers={"Forwarded": "proto=https"})  # no for=
    assert status == 400, body


@pytest.mark.parametrize("env_var", ["FULMEN_FORWARDED_HEADERS", None])
def test_forwarded_headers_choice(server, env_var):
    args = ("--proxy-headers",) if env_var else ("--proxy-headers", "--forwarded-headers", "X-Forwarded-Host")
    srv = server("echo_environ:app", *args, env={env_var: "x-forwarded-host"} if env_var else None)
    env = environ(srv, XFF)
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["wsgi.url_scheme"] == "http"  # not chosen
    assert env["HTTP_HOST"] == "shop.example:8443"


@pytest.mark.parametrize("value, expected", [("x-real-ip", "'x-real-ip' is not a proxy header"),
                                             ("forwarded,x-forwarded-for", "cannot be combined"),
                                             (",", "no header given")])
def test_bad_forwarded_headers(value, expected):
    result = run_fulmen("--forwarded-headers", value, "hello:app")
    assert result.returncode == 1 and "--forwarded-headers" in result.stderr and expected in result.stderr, \
        result.stderr
    result = run_fulmen("hello:app", env={"FULMEN_FORWARDED_HEADERS": value})
    assert result.returncode == 1 and "FULMEN_FORWARDED_HEADERS" in result.stderr, result.stderr


@pytest.mark.parametrize("allow, env_var", [("*", "FORWARDED_ALLOW_IPS"),
                                            ("127.0.0.0/8", "FULMEN_FORWARDED_ALLOW_IPS")])
def test_allow_list_from_environment(server, allow, env_var):
    srv = server("echo_environ:app", env={"FULMEN_PROXY_HEADERS": "true", env_var: allow})
    env = environ(srv, {"X-Forwarded-For": "203.0.113.9, 127.0.0.5"})
    # "*": the left-most entry (Uvicorn); a list: the right-most one not trusted.
    assert env["REMOTE_ADDR"] == "203.0.113.9"


def test_fulmen_variable_beats_forwarded_allow_ips(server):
    srv = server("echo_environ:app", "--proxy-headers",
                 env={"FORWARDED_ALLOW_IPS": "*", "FULMEN_FORWARDED_ALLOW_IPS": "10.0.0.1"})
    assert environ(srv, XFF)["REMOTE_ADDR"] == "127.0.0.1"  # FULMEN_ wins: 127.0.0.1 is not trusted


def test_unix_socket_peers(server, tmp_path):
    path = str(tmp_path / "p.sock")
    srv = server("echo_environ:app", "--uds", path, "--proxy-headers")
    env = environ(srv, XFF)
    assert "REMOTE_ADDR" not in env and env["wsgi.url_scheme"] == "http"  # not trusted by default
    srv.stop()
    srv = server("echo_environ:app", "--uds", path, "--proxy-headers", "--forwarded-allow-ips", "unix")
    env = environ(srv, XFF)
    assert env["REMOTE_ADDR"] == "198.51.100.7" and env["wsgi.url_scheme"] == "https"


@pytest.mark.parametrize("value", ["10.0.0.0/33", "example.com", "1.2.3.4, nope", "::1/200"])
def test_bad_allow_list(value):
    result = run_fulmen("--forwarded-allow-ips", value, "hello:app")
    assert result.returncode == 1 and "--forwarded-allow-ips" in result.stderr and "not an IP" in result.stderr
    result = run_fulmen("hello:app", env={"FORWARDED_ALLOW_IPS": value})
    assert result.returncode == 1 and "FORWARDED_ALLOW_IPS" in result.stderr


def test_bad_proxy_switches():
    result = run_fulmen("hello:app", env={"FULMEN_PROXY_PROTOCOL": "x"})
    assert result.returncode == 1 and "FULMEN_PROXY_PROTOCOL=x" in result.stderr
    result = run_fulmen("hello:app", env={"FULMEN_PROXY_HEADERS": "maybe"})
    assert result.returncode == 1 and "FULMEN_PROXY_HEADERS=maybe" in result.stderr


# ---- --proxy-headers, ASGI ----------------------------------------------------------------------

def test_asgi_trusted_proxy_headers(server):
    srv = server("asgi_scope:app", "--proxy-headers", "--forwarded-headers", ALL_X)
    scope = asgi_scope(srv, XFF)
    assert tuple_of(scope["client"]) == ["198.51.100.7", 0]
    assert scope["scheme"] == "https"
    assert tuple_of(scope["server"]) == ["shop.example", 8443]
    scope = asgi_scope(srv)
    assert scope["scheme"] == "http" and tuple_of(scope["client"])[0] == "127.0.0.1"
    assert tuple_of(scope["server"]) == ["127.0.0.1", srv.port]
    # Only a port: the listener's host with the forwarded port.
    scope = asgi_scope(srv, {"X-Forwarded-Port": "8080"})
    assert tuple_of(scope["server"]) == ["127.0.0.1", 8080] and tuple_of(scope["client"])[0] == "127.0.0.1"


def test_asgi_untrusted_peer_is_ignored(server):
    srv = server("asgi_scope:app", "--proxy-headers", "--forwarded-allow-ips", "192.0.2.1")
    scope = asgi_scope(srv, XFF)
    assert scope["scheme"] == "http" and tuple_of(scope["client"])[0] == "127.0.0.1"
    assert tuple_of(scope["server"]) == ["127.0.0.1", srv.port]


def test_asgi_websocket_scheme_is_wss(server):
    srv = server("asgi_ws:app", "--proxy-headers")
    ws = open_ws(srv.port, "/scope", headers=[("X-Forwarded-Proto", "https"), ("X-Forwarded-For", "192.0.2.44")])
    try:
        _, data = ws.recv_message()
        scope = json.loads(data)
        assert scope["scheme"] == "wss"
        assert tuple_of(scope["client"]) == ["192.0.2.44", 0]
    finally:
        ws.close()


# ---- --limit-concurrency ------------------------------------------------------------------------

@pytest.mark.parametrize("app", ["hello:app", "asgi_scope:app"])
def test_limit_concurrency(server, app):
    srv = server(app, "--limit-concurrency", "2")
    held = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(2)]
    try:
        for s in held:
            status, _, _ = read_status(s)
            assert status == 200
        extra = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        status, head, body = read_status(extra)
        assert status == 503 and b"connection: close" in head.lower() and b"concurrency" in body
        assert extra.recv(1) == b""  # closed after the answer
        extra.close()
        # A held connection goes away: once the server noticed, a new one is served again.
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as again:
                status = read_status(again)[0]
            if status == 200 or time.monotonic() > deadline:
                break
        assert status == 200
    finally:
        for s in held:
            s.close()


def read_status(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """Sends a keep-alive GET and reads one response (Content-Length framed)."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(head.split(b" ")[1]), head, body


@pytest.mark.parametrize("value, expected", [("0", "at least 1"), ("many", "integer")])
def test_bad_limit_concurrency(value, expected):
    result = run_fulmen("--limit-concurrency", value, "hello:app")
    assert result.returncode == 1 and f"--limit-concurrency {value}" in result.stderr and expected in result.stderr


# ---- --proxy-protocol ---------------------------------------------------------------------------

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_tcp4(src: str, sport: int, tlvs: bytes = b"") -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton("10.0.0.1") + struct.pack(">HH", sport, 443) + tlvs
    return V2_SIG + bytes([0x21, 0x11]) + struct.pack(">H", len(body)) + body


def raw_request(port: int, pieces: list[bytes], path: str = "/") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for p in pieces:
            s.sendall(p)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def body_json(resp: bytes) -> dict:
    assert resp.startswith(b"HTTP/1.1 200"), resp[:200]
    return json.loads(resp.partition(b"\r\n\r\n")[2])


def test_proxy_protocol_v1_and_v2_wsgi(server):
    srv = server("echo_environ:app", "--proxy-protocol")
    env = body_json(raw_request(srv.port, [b"PROXY TCP4 192.0.2.10 10.0.0.1 40001 443\r\n"]))
    assert env["REMOTE_ADDR"] == "192.0.2.10" and env["REMOTE_PORT"] == "40001"
    env = body_json(raw_request(srv.port, [b"PROXY TCP6 2001:db8::5 ::1 40002 443\r\n"]))
    assert env["REMOTE_ADDR"] == "2001:db8::5" and env["REMOTE_PORT"] == "40002"
    # v2 in pieces (the signature split in the middle), with a TLV to skip.
    header = v2_tcp4("198.51.100.3", 40003, tlvs=b"\x01\x00\x02h2")
    env = body_json(raw_request(srv.port, [header[:7], header[7:20], header[20:]]))
    assert env["REMOTE_ADDR"] == "198.51.100.3" and env["REMOTE_PORT"] == "40003"
    # LOCAL and UNKNOWN: the real peer.
    local = V2_SIG + bytes([0x20, 0x00, 0, 0])
    assert body_json(raw_request(srv.port, [local]))["REMOTE_ADDR"] == "127.0.0.1"
    assert body_json(raw_request(srv.port, [b"PROXY UNKNOWN\r\n"]))["REMOTE_ADDR"] == "127.0.0.1"


@pytest.mark.parametrize("first", [b"", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", b"PROXY TCP9 x\r\n",
                                   V2_SIG + bytes([0x21, 0x12, 0, 12]) + bytes(12)])
def test_proxy_protocol_required(server, first):
    srv = server("echo_environ:app", "--proxy-protocol")
    try:
        answer = raw_request(srv.port, [first])
    except (ConnectionResetError, BrokenPipeError):
        # The server may close as soon as the bad header is read, with the request still unread
        # in its socket: the kernel then resets the connection. Either way: no HTTP answer.
        answer = b""
    assert answer == b""  # closed without an HTTP answer
    assert body_json(raw_request(srv.port, [b"PROXY UNKNOWN\r\n"]))  # the server is still fine


def test_proxy_protocol_asgi_with_keep_alive(server):
    srv = server("asgi_scope:app", "--proxy-protocol")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"PROXY TCP4 192.0.2.77 10.0.0.1 5555 80\r\n")
        for _ in range(2):  # the header applies to every request on the connection
            status, _, body = read_status(s)
            assert status == 200 and tuple_of(json.loads(body)["client"]) == ["192.0.2.77", 5555]


def test_proxy_protocol_on_a_unix_socket(server, tmp_path):
    path = str(tmp_path / "pp.sock")
    srv = server("echo_environ:app", "--uds", path, "--proxy-protocol")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"PROXY TCP4 192.0.2.8 10.0.0.1 6000 80\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    env = body_json(data)
    assert env["REMOTE_ADDR"] == "192.0.2.8" and env["REMOTE_PORT"] == "6000"
    assert srv.proc.poll() is None


def test_proxy_protocol_source_decides_proxy_header_trust(server):
    # A TCP pass-through balancer at 127.0.0.1 forwards the client's bytes: the client's own
    # X-Forwarded-For must not be believed because the balancer is trusted.
    srv = server("echo_environ:app", "--proxy-protocol", "--proxy-headers",
                 "--forwarded-allow-ips", "127.0.0.1,10.0.0.0/8")
    def through_balancer(source: bytes) -> dict:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(b"PROXY TCP4 " + source + b" 10.0.0.1 40001 443\r\nGET / HTTP/1.1\r\nHost: x\r\n"
                      b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return body_json(data)

    env = through_balancer(b"192.0.2.10")
    assert env["REMOTE_ADDR"] == "192.0.2.10" and env["wsgi.url_scheme"] == "http"
    # An HTTP proxy (10.0.0.7, trusted) behind the balancer: its headers are believed.
    env = through_balancer(b"10.0.0.7")
    assert env["REMOTE_ADDR"] == "6.6.6.6" and env["wsgi.url_scheme"] == "https"
