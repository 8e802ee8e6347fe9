"""PEP 3333 conformance checked from the app's side: wsgiref.validate.validator wraps the test
apps, with every WSGIWarning an error (apps/validated.py). A violation by the server becomes a
500 and a traceback in its log, so each test asserts the status and a clean log.
"""

from __future__ import annotations

import re

import pytest

from rawhttp import Reader, chunked, connect, exchange, request_bytes

PROBLEMS = re.compile(r"Warning|Traceback|Exception ignored|AssertionError|Error")

CASES = [
    ("get", request_bytes("GET", "/get?x=1"), 200, b"got x=1"),
    ("post", request_bytes("POST", "/post", [("Content-Length", "5")], b"hello"), 200, b"posted hello"),
    ("post-chunked", request_bytes("POST", "/post", [("Transfer-Encoding", "chunked")], chunked(b"hel", b"lo")),
     200, b"posted hello"),
    ("post-empty", request_bytes("POST", "/post", [("Content-Length", "0")]), 200, b"posted "),
    ("readline-readlines", request_bytes("POST", "/lines", [("Content-Length", "18")], b"one\ntwo\nthree\nfour"),
     200, b"one\n|two|\n|three\n|four"),
    ("iterate-input", request_bytes("POST", "/iterate", [("Transfer-Encoding", "chunked")], chunked(b"a\nb", b"\nc")),
     200, b"a\n|b\n|c"),
    ("stream", request_bytes("GET", "/stream"), 200, b"".join(b"chunk %d\n" % i for i in range(10))),
    ("file-wrapper", request_bytes("GET", "/file"), 200, bytes(range(256)) * 64),
    ("write", request_bytes("GET", "/write"), 200, b"written returned"),
    ("no-content", request_bytes("GET", "/empty"), 204, b""),
    ("http10", request_bytes("GET", "/get?v=10", version="HTTP/1.0", host=None), 200, b"got v=10"),
    ("options", request_bytes("OPTIONS", "/get"), 200, b"got "),
    ("percent-path", request_bytes("GET", "/g%65t"), 200, b"got "),
]


@pytest.fixture(params=["1", "4"], ids=["inline", "threads"], scope="module")
def srv(request, shared_server):
    return shared_server("validated:app", "--threads", request.param)


def assert_clean(srv) -> None:
    log = srv.output
    assert not PROBLEMS.search(log), log


@pytest.mark.parametrize("raw,status,body", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_validated(srv, raw, status, body):
    r = exchange(srv.port, raw)
    assert (r.status, r.body) == (status, body), srv.output
    assert_clean(srv)


def test_validated_head(srv):
    with connect(srv.port) as sock:
        reader = Reader(sock)
        sock.sendall(request_bytes("HEAD", "/head"))
        r = reader.read_response(head_request=True)
        assert r.status == 200 and r.header("content-length") == "9"
        sock.sendall(request_bytes("GET", "/head"))
        assert reader.read_response().body == b"head body"
    assert_clean(srv)


def test_validated_real_file(srv, tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789" * 5000)
    r = exchange(srv.port, request_bytes("GET", f"/realfile?{path}"))
    assert (r.status, r.body) == (200, path.read_bytes())
    assert_clean(srv)


def test_validated_keep_alive_sequence(srv):
    # Many requests on one connection: each environ and iterable is checked afresh, and close()
    # must have been called on every one (the validator complains when it is not).
    with connect(srv.port) as sock:
        reader = Reader(sock)
        for raw, status, body in [c[1:] for c in CASES if c[0] != "http10"]:
            sock.sendall(raw)
            r = reader.read_response()
            assert (r.status, r.body) == (status, body)
    assert_clean(srv)


def test_validator_really_catches_problems(server):
    # The clean logs above mean something only if a complaint does show: the validator warns
    # about a method it does not know, and the warning is an error in apps/validated.py.
    srv = server("validated:app")
    r = exchange(srv.port, request_bytes("PROPFIND", "/get"))
    assert r.status == 500
    assert srv.wait_for_log("WSGIWarning")
    assert "Traceback" in srv.output


def test_log_stays_clean_after_shutdown(srv):
    # Anything reported late (an iterable collected without close()) shows by the time the server
    # has stopped.
    assert srv.stop() == 0
    assert_clean(srv)
