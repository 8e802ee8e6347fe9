"""Every error status the engine answers with, through the real server: a table of raw requests
(and the options they need) to the status, then the connection must close.

Strict parsing means one answer and a close: after a framing error nothing that follows on the
connection can be trusted.
"""

from __future__ import annotations

import pytest

from rawhttp import Reader, connect

H = b"Host: localhost\r\n"


def post(headers: bytes, body: bytes = b"") -> bytes:
    return b"POST /echo HTTP/1.1\r\n" + H + headers + b"\r\n" + body


# (id, server options, raw request, status)
CASES = [
    ("obs-fold", (), b"GET / HTTP/1.1\r\n" + H + b"X-Long: a\r\n  continued\r\n\r\n", 400),
    ("obs-fold-tab", (), b"GET / HTTP/1.1\r\n" + H + b"X-Long: a\r\n\tcontinued\r\n\r\n", 400),
    ("cl-and-te", (), post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400),
    ("te-and-cl", (), post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"), 400),
    ("te-chunked-not-last", (), post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"), 400),
    ("te-chunked-twice", (), post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                                  b"0\r\n\r\n"), 400),
    ("te-in-http10", (), b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("cl-not-a-number", (), post(b"Content-Length: abc\r\n"), 400),
    ("cl-negative", (), post(b"Content-Length: -1\r\n"), 400),
    ("cl-plus-sign", (), post(b"Content-Length: +5\r\n", b"hello"), 400),
    ("cl-hex", (), post(b"Content-Length: 0x5\r\n", b"hello"), 400),
    ("cl-overflow", (), post(b"Content-Length: 99999999999999999999999\r\n"), 400),
    ("cl-duplicates-differ", (), post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), 400),
    ("cl-list-differs", (), post(b"Content-Length: 5, 6\r\n", b"hello!"), 400),
    ("chunk-size-not-hex", (), post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-empty", (), post(b"Transfer-Encoding: chunked\r\n", b"\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-overflow", (), post(b"Transfer-Encoding: chunked\r\n",
                                     b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-data-no-crlf", (), post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX0\r\n\r\n"), 400),
    ("nul-in-value", (), b"GET / HTTP/1.1\r\n" + H + b"X-Bad: a\x00b\r\n\r\n", 400),
    ("cr-in-value", (), b"GET / HTTP/1.1\r\n" + H + b"X-Bad: a\rb\r\n\r\n", 400),
    ("lf-in-value", (), b"GET / HTTP/1.1\r\n" + H + b"X-Bad: a\nb\r\n\r\n", 400),
    ("space-before-colon", (), b"GET / HTTP/1.1\r\n" + H + b"X-Bad : value\r\n\r\n", 400),
    ("tab-before-colon", (), b"GET / HTTP/1.1\r\n" + H + b"X-Bad\t: value\r\n\r\n", 400),
    ("empty-header-name", (), b"GET / HTTP/1.1\r\n" + H + b": value\r\n\r\n", 400),
    ("bare-lf-request-line", (), b"GET / HTTP/1.1\n" + H + b"\r\n", 400),
    ("bare-lf-everywhere", (), b"GET / HTTP/1.1\nHost: localhost\n\n", 400),
    ("missing-host-http11", (), b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", (), b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("two-identical-hosts", (), b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    ("bad-method", (), b"G(T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("bad-version", (), b"GET / HTTX/1.1\r\n" + H + b"\r\n", 400),
    ("extra-space-in-request-line", (), b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("body-over-limit-length", ("--limit-request-body", "100"), post(b"Content-Length: 200\r\n", b"x" * 200), 413),
    ("body-over-limit-chunked", ("--limit-request-body", "100"),
     post(b"Transfer-Encoding: chunked\r\n", b"c8\r\n" + b"x" * 200 + b"\r\n0\r\n\r\n"), 413),
    ("body-over-limit-chunked-in-pieces", ("--limit-request-body", "100"),
     post(b"Transfer-Encoding: chunked\r\n", b"".join(b"32\r\n" + b"x" * 50 + b"\r\n" for _ in range(4)) +
          b"0\r\n\r\n"), 413),
    ("request-line-too-long", ("--limit-request-line", "100"),
     b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("too-many-fields", ("--limit-request-fields", "5"),
     b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-H%d: v\r\n" % i for i in range(10)) + b"\r\n", 431),
    ("field-too-large", ("--limit-request-field-size", "100"),
     b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"v" * 200 + b"\r\n\r\n", 431),
    ("unknown-coding", (), post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), 501),
    ("http-2.0", (), b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("http-1.2", (), b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
]


@pytest.mark.parametrize("options,raw,status", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rejection(shared_server, options, raw, status):
    srv = shared_server("probe:app", *options)
    with connect(srv.port) as sock:
        sock.sendall(raw)
        reader = Reader(sock)
        r = reader.read_response()
        assert r.status == status, (r.status, r.body)
        assert r.header("connection") == "close"
        assert r.header("content-length") == str(len(r.body))
        assert b"echo" not in r.body  # the app never answered
        assert reader.read_until_eof() == b""  # and nothing more: the server closed


# Limits are tested at N and N+1: the request right at the limit is served.
AT_LIMIT = [
    ("body-at-limit", ("--limit-request-body", "100"), post(b"Content-Length: 100\r\n", b"x" * 100)),
    ("chunked-body-at-limit", ("--limit-request-body", "100"),
     post(b"Transfer-Encoding: chunked\r\n", b"64\r\n" + b"x" * 100 + b"\r\n0\r\n\r\n")),
    ("fields-at-limit", ("--limit-request-fields", "5"),
     b"POST /echo HTTP/1.1\r\n" + H + b"".join(b"X-H%d: v\r\n" % i for i in range(4)) + b"\r\n"),
    ("cl-duplicates-equal", (), post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello")),
    ("http10-without-host", (), b"POST /echo HTTP/1.0\r\n\r\n"),
]


@pytest.mark.parametrize("options,raw", [c[1:] for c in AT_LIMIT], ids=[c[0] for c in AT_LIMIT])
def test_accepted_at_the_limit(shared_server, options, raw):
    srv = shared_server("probe:app", *options)
    with connect(srv.port) as sock:
        sock.sendall(raw)
        r = Reader(sock).read_response()
        assert r.status == 200, (r.status, r.body)


@pytest.mark.parametrize("limit", [100, 50])
def test_request_line_limit_boundary(shared_server, limit):
    srv = shared_server("probe:app", "--limit-request-line", str(limit))
    prefix, suffix = b"GET /echo?", b" HTTP/1.1"
    for length, status in ((limit, 200), (limit + 1, 414)):
        line = prefix + b"a" * (length - len(prefix) - len(suffix)) + suffix
        assert len(line) == length
        with connect(srv.port) as sock:
            sock.sendall(line + b"\r\n" + H + b"\r\n")
            assert Reader(sock).read_response().status == status, length


def test_field_size_limit_boundary(shared_server):
    srv = shared_server("probe:app", "--limit-request-field-size", "100")
    for length, status in ((100, 200), (101, 431)):
        field = b"X-Big: " + b"v" * (length - len(b"X-Big: "))
        assert len(field) == length
        with connect(srv.port) as sock:
            sock.sendall(b"GET /echo HTTP/1.1\r\n" + H + field + b"\r\n\r\n")
            assert Reader(sock).read_response().status == status, length


def test_rejection_after_a_good_request_on_the_same_connection(shared_server):
    srv = shared_server("probe:app")
    with connect(srv.port) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET /head HTTP/1.1\r\n" + H + b"\r\n" + b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
                     + b"GET /head HTTP/1.1\r\n" + H + b"\r\n")
        assert reader.read_response().status == 200
        assert reader.read_response().status == 400
        # The request after the bad one is never answered.
        assert reader.read_until_eof() == b""
