"""A WebSocket client over a raw socket, for the tests a real client library will not do: bad
handshakes, unmasked or invalid frames, fragments with a ping between them, a client that never
answers pings or stops reading. Frames are built (and masked) here, byte by byte, per RFC 6455.

The `websockets` library is the client everywhere else (test_websocket.py).
"""

from __future__ import annotations

import base64
import hashlib
import os
import select
import socket
import struct
from dataclasses import dataclass

from rawhttp import TIMEOUT, Reader, Response, connect, request_bytes

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class Closed(Exception):
    """The server closed the TCP connection where a frame was expected."""


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key: str) -> str:
    """The Sec-WebSocket-Accept a server must answer `key` with (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def upgrade_request(path: str = "/echo", key: str | None = None, version: str | None = "13",
                    connection: str = "Upgrade", upgrade: str = "websocket",
                    headers: list[tuple[str, str]] | None = None) -> bytes:
    """The bytes of an opening handshake; key=None makes a fresh valid key, key="" leaves the
    header out (as does version=None)."""
    fields = [("Upgrade", upgrade), ("Connection", connection)]
    key = new_key() if key is None else key
    if key:
        fields.append(("Sec-WebSocket-Key", key))
    if version is not None:
        fields.append(("Sec-WebSocket-Version", version))
    return request_bytes("GET", path, fields + list(headers or []))


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte key repeated; done on one big integer, so 1 MiB costs milliseconds."""
    n = len(payload)
    if n == 0:
        return b""
    keystream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes = b"", fin: bool = True, masked: bool = True, rsv1: bool = False) -> bytes:
    """One frame as a client sends it: masked with a random key unless masked=False (which a
    server must reject, RFC 6455 5.1)."""
    head = bytearray([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head.append(bit | n)
    elif n < 65536:
        head.append(bit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(bit | 127)
        head += struct.pack("!Q", n)
    if not masked:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + mask(payload, key)


def close_payload(code: int | None = 1000, reason: str = "") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason.encode()


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes
    rsv1: bool = False
    masked: bool = False

    def close_code(self) -> tuple[int | None, str]:
        """(code, reason) of a close frame (None when it carries no code)."""
        assert self.opcode == CLOSE, self
        if len(self.payload) < 2:
            return None, ""
        return struct.unpack("!H", self.payload[:2])[0], self.payload[2:].decode()


class WSConn:
    """One raw WebSocket connection: the socket, the handshake response and a frame reader that
    keeps whatever arrived beyond the current frame."""

    def __init__(self, sock: socket.socket, reader: Reader, response: Response) -> None:
        self.sock = sock
        self.response = response
        self.buf = bytearray(reader.buf)  # frames may have come in the same segment as the 101
        self.eof = False

    # -- sending
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, opcode: int, payload: bytes = b"", **kwargs) -> None:
        self.sock.sendall(frame(opcode, payload, **kwargs))

    def send_text(self, text: str | bytes) -> None:
        self.send_frame(TEXT, text.encode() if isinstance(text, str) else text)

    def send_binary(self, data: bytes) -> None:
        self.send_frame(BINARY, data)

    def close(self, code: int | None = 1000, reason: str = "") -> None:
        self.send_frame(CLOSE, close_payload(code, reason))

    # -- receiving
    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            self.eof = True
            raise Closed(f"EOF with {len(self.buf)} bytes of a frame buffered")
        self.buf += data

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            self._fill()

    def recv_frame(self, timeout: float | None = TIMEOUT) -> Frame:
        self.sock.settimeout(timeout)
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n, pos = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            n, pos = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, pos = struct.unpack("!Q", self.buf[2:10])[0], 10
        masked = bool(b1 & 0x80)
        key = b""
        if masked:  # a server must not mask (RFC 6455 5.1); kept so a test can see it did
            self._need(pos + 4)
            key, pos = bytes(self.buf[pos:pos + 4]), pos + 4
        self._need(pos + n)
        payload = bytes(self.buf[pos:pos + n])
        del self.buf[:pos + n]
        if masked:
            payload = mask(payload, key)
        return Frame(bool(b0 & 0x80), b0 & 0x0F, payload, bool(b0 & 0x40), masked)

    def recv_message(self, timeout: float | None = TIMEOUT, answer_pings: bool = True) -> tuple[int, bytes]:
        """The next whole data message as (TEXT or BINARY, payload); pings are answered (or
        skipped) and pongs skipped on the way. A close frame raises AssertionError."""
        opcode, parts = None, []
        while True:
            f = self.recv_frame(timeout)
            if f.opcode == PING:
                if answer_pings:
                    self.send_frame(PONG, f.payload)
                continue
            if f.opcode == PONG:
                continue
            if f.opcode == CLOSE:
                raise AssertionError(f"close frame {f.close_code()} instead of a message")
            if opcode is None:
                assert f.opcode in (TEXT, BINARY), f"message starts with opcode {f.opcode}"
                opcode = f.opcode
            else:
                assert f.opcode == CONT, f"opcode {f.opcode} in the middle of a message"
            parts.append(f.payload)
            if f.fin:
                return opcode, b"".join(parts)

    def recv_close(self, timeout: float = TIMEOUT) -> tuple[int | None, str]:
        """Skips data and control frames until the server's close frame; returns (code, reason)."""
        while True:
            f = self.recv_frame(timeout)
            if f.opcode == CLOSE:
                return f.close_code()

    def wait_eof(self, timeout: float = TIMEOUT) -> bytes:
        """Reads until the server closes the TCP connection; returns what came before."""
        self.sock.settimeout(timeout)
        while not self.eof:
            try:
                self._fill()
            except Closed:
                break
        data, self.buf = bytes(self.buf), bytearray()
        return data

    def __enter__(self) -> WSConn:
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()


def open_ws(port: int, path: str = "/echo", headers: list[tuple[str, str]] | None = None,
            timeout: float = TIMEOUT, rcvbuf: int | None = None, sndbuf: int | None = None) -> WSConn:
    """Connects, performs the opening handshake, checks the 101 and its Sec-WebSocket-Accept."""
    sock = connect(port, timeout, rcvbuf=rcvbuf) if sndbuf is None else _connect_sndbuf(port, timeout, rcvbuf, sndbuf)
    key = new_key()
    sock.sendall(upgrade_request(path, key=key, headers=headers))
    reader = Reader(sock)
    response = reader.read_response()
    if response.status != 101:
        sock.close()
        raise AssertionError(f"handshake for {path}: {response.status} {response.reason} {response.body[:200]!r}")
    assert response.header("sec-websocket-accept") == accept_for(key), response.headers
    return WSConn(sock, reader, response)


def _connect_sndbuf(port: int, timeout: float, rcvbuf: int | None, sndbuf: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)  # before connect, so it sticks
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def handshake_response(port: int, raw: bytes, timeout: float = TIMEOUT) -> tuple[Response, Reader]:
    """Sends a hand-made opening handshake; returns the server's response (a 101 has no body)."""
    sock = connect(port, timeout)
    sock.sendall(raw)
    reader = Reader(sock)
    try:
        return reader.read_response(), reader
    except BaseException:
        sock.close()
        raise


def send_until_blocked(sock: socket.socket, next_chunk, cap: int, stall: float = 1.0) -> tuple[bool, int, bytearray]:
    """Writes next_chunk() after next_chunk() to the non-blocking `sock` until the peer stops
    reading: True once the socket stays unwritable for `stall` seconds (a peer that still reads
    frees space within milliseconds), False if `cap` bytes went out first. Returns (blocked,
    bytes written, the unsent rest of the last chunk)."""
    sock.setblocking(False)
    pending, written = bytearray(), 0
    while written < cap:
        if not pending:
            pending += next_chunk()
        try:
            n = sock.send(pending)
            del pending[:n]
            written += n
        except BlockingIOError:
            _, writable, _ = select.select([], [sock], [], stall)
            if not writable:
                return True, written, pending
    return False, written, pending
