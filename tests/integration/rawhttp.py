"""A small HTTP/1.1 client over a raw socket, for tests that must control every byte.

The reader keeps what it received beyond the current response, so pipelined responses parse one
after the other; a response that the server cut short raises Incomplete instead of hanging.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

TIMEOUT = 10.0


class Incomplete(Exception):
    """The peer closed the connection before the response was complete."""

    def __init__(self, message: str, received: bytes) -> None:
        super().__init__(message)
        self.received = received


@dataclass
class Response:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)  # chunk sizes as received, when chunked

    def header(self, name: str) -> str | None:
        """The value of `name` (case-insensitive); several fields are joined with ', '."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def names(self) -> list[str]:
        return [k.lower() for k, _ in self.headers]


def connect(port: int, timeout: float = TIMEOUT, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: caps the window
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


class Reader:
    """Reads responses from `sock`, keeping leftover bytes between calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.recv_calls = 0
        self.eof = False
        self.raw = b""  # every byte received, for tests that look at a cut response

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        self.recv_calls += 1
        if not data:
            self.eof = True
            return False
        self.buf += data
        self.raw += data
        return True

    def _line(self, got: bytes) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise Incomplete("connection closed in the middle of a line", got + self.buf)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int, got: bytes) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise Incomplete(f"connection closed with {n - len(self.buf)} body bytes missing",
                                 got + self.buf)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _fields(self, got: bytes) -> list[tuple[str, str]]:
        fields = []
        while True:
            line = self._line(got)
            if not line:
                return fields
            name, _, value = line.decode("latin-1").partition(":")
            fields.append((name, value.strip()))

    def read_head(self) -> Response:
        line = self._line(b"")
        version, status, reason = (line.decode("latin-1").split(" ", 2) + [""])[:3]
        return Response(int(status), reason, version, self._fields(line))

    def read_response(self, head_request: bool = False) -> Response:
        """One final response (1xx responses are returned too: call again for the next one)."""
        r = self.read_head()
        got = b""
        te = (r.header("transfer-encoding") or "").lower()
        cl = r.header("content-length")
        if head_request or r.status < 200 or r.status in (204, 304):
            return r
        if te:
            assert te == "chunked", te
            parts = []
            while True:
                size_line = self._line(got)
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    r.trailers = self._fields(got)
                    break
                parts.append(self._exactly(size, got))
                got += parts[-1]
                if self._exactly(2, got) != b"\r\n":
                    raise AssertionError("chunk data not followed by CRLF")
            r.chunks = parts
            r.body = b"".join(parts)
        elif cl is not None:
            r.body = self._exactly(int(cl), got)
        else:  # close-delimited
            while self._fill():
                pass
            r.body, self.buf = self.buf, b""
        return r

    def read_until_eof(self, timeout: float = TIMEOUT) -> bytes:
        """Everything until the peer closes (fails if it does not within `timeout`)."""
        self.sock.settimeout(timeout)
        while self._fill():
            pass
        data, self.buf = self.buf, b""
        return data


def request_bytes(method: str = "GET", target: str = "/", headers: list[tuple[str, str]] | None = None,
                  body: bytes = b"", version: str = "HTTP/1.1", host: str | None = "localhost") -> bytes:
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    for k, v in headers or []:
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def get(target: str, version: str = "HTTP/1.1", headers: list[tuple[str, str]] | None = None) -> bytes:
    """The bytes of a GET request."""
    return request_bytes("GET", target, headers, version=version)


def post(target: str, body: bytes, headers: list[tuple[str, str]] | None = None) -> bytes:
    """The bytes of a POST request with a Content-Length body."""
    return request_bytes("POST", target, [("Content-Length", str(len(body))), *(headers or [])], body)


def exchange(port: int, raw: bytes, head_request: bool = False, timeout: float = TIMEOUT) -> Response:
    """Send `raw` on a new connection and read one response."""
    with connect(port, timeout) as sock:
        sock.sendall(raw)
        return Reader(sock).read_response(head_request)


def chunked(*parts: bytes, ext: str = "", trailers: list[tuple[str, str]] | None = None) -> bytes:
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext.encode(), p) for p in parts if p)
    out += b"0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in trailers or []) + b"\r\n"
    return out


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Polls `predicate` until it returns something truthy; returns it (or the last falsy value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


MiB = 1024 * 1024


@dataclass
class RssGrowth:
    kib: int = 0  # peak RSS during the block, less the larger of the peak and the RSS before it
    before: tuple[int, int] = (0, 0)  # (VmHWM, VmRSS) before
    peak: int = 0


@contextmanager
def rss_growth(pid: int):
    """`with rss_growth(pid) as g: ...` then g.kib: how far the process's peak RSS rose above
    where it stood before the block (what a streamed body must keep small)."""
    g = RssGrowth(before=(rss_kib(pid, "VmHWM"), rss_kib(pid)))
    yield g
    g.peak = rss_kib(pid, "VmHWM")
    g.kib = g.peak - max(g.before)


def upload(port: int, target: str, framing: str, mib: int = 100) -> tuple[Response, str]:
    """POSTs `mib` MiB of random bytes to `target` on one raw connection, framed by
    Content-Length ("length") or chunked (one 1 MiB chunk each); returns the response and the
    SHA-256 of the body sent."""
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    with connect(port, timeout=60) as sock:
        if framing == "length":
            sock.sendall(request_bytes("POST", target, [("Content-Length", str(mib * MiB))]))
        else:
            sock.sendall(request_bytes("POST", target, [("Transfer-Encoding", "chunked")]))
        for _ in range(mib):
            digest.update(block)
            sock.sendall(block if framing == "length" else b"%x\r\n%s\r\n" % (len(block), block))
        if framing != "length":
            sock.sendall(b"0\r\n\r\n")
        return Reader(sock).read_response(), digest.hexdigest()


def in_parallel(fn, n: int, timeout: float = 60.0) -> tuple[list, float]:
    """Calls fn(0) ... fn(n - 1) at once, each on its own thread (n clients at the same time);
    returns their results in order and the seconds the whole took. An exception in any call is
    raised here."""
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(fn, range(n), timeout=timeout))
    return results, time.monotonic() - start
