"""Fixtures that run the real `python -m fulmen` process.

A server is ready when it logs "Listening on ...": the fixture reads that line from stderr (which
also gives the real port for --port 0) instead of sleeping, and fails with the process output if
the line does not come in time.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

APPS = Path(__file__).parent / "apps"
READY_TIMEOUT = 20.0
LISTENING = re.compile(r"Listening on (\S+)")


def fulmen_env(env: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment for a fulmen process: ours without FULMEN_* (so the developer's shell
    cannot change results), the test apps directory as --app-dir, then `env` (None removes)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("FULMEN_")}
    out["FULMEN_APP_DIR"] = str(APPS)
    for key, value in (env or {}).items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def run_fulmen(*args: str, env: dict[str, str | None] | None = None, timeout: float = 30,
               **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m fulmen ARGS` to completion (for --help, --version and start-up errors)."""
    return subprocess.run([sys.executable, "-m", "fulmen", *args], env=fulmen_env(env), capture_output=True,
                          text=True, timeout=timeout, **kwargs)


class _Reader:
    """Drains one pipe on a thread (so the server never blocks on a full pipe) and keeps the lines."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self.thread.start()

    def _run(self, stream) -> None:
        for line in stream:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait_for(self, pattern: re.Pattern, timeout: float) -> re.Match | None:
        deadline = time.monotonic() + timeout
        seen = 0
        with self.cond:
            while True:
                for line in self.lines[seen:]:
                    if m := pattern.search(line):
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    return None
                self.cond.wait(left)

    @property
    def text(self) -> str:
        with self.cond:
            return "".join(self.lines)


class Server:
    """A running `python -m fulmen` process."""

    def __init__(self, command: list[str], env: dict[str, str | None] | None, pass_fds=(),
                 ready: re.Pattern = LISTENING) -> None:
        self.command = command
        self.proc = subprocess.Popen(command, env=fulmen_env(env),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     pass_fds=pass_fds)
        self._stdout = _Reader(self.proc.stdout)
        self._stderr = _Reader(self.proc.stderr)
        m = self._stderr.wait_for(ready, READY_TIMEOUT)
        if m is None:
            self.kill()
            raise AssertionError(f"{' '.join(command)} did not start (exit code {self.proc.returncode}):\n"
                                 f"{self.output}")
        self.address = m.group(1)  # "http://127.0.0.1:PORT", "unix:/path" or "fd://N"
        self.port: int | None = None
        self.url: str | None = None
        self.uds: str | None = None
        http_url = re.search(r"http://(\[[^\]]+\]|[^:/\s]+):(\d+)", m.string[m.start():])
        if self.address.startswith("unix:"):
            self.uds = self.address[len("unix:"):]
        elif http_url:
            self.port = int(http_url.group(2))
            self.url = f"http://{http_url.group(1)}:{self.port}"

    @property
    def output(self) -> str:
        """Everything the server wrote to stderr so far (its log)."""
        return self._stderr.text

    @property
    def stdout(self) -> str:
        """Everything written to stdout (the access log)."""
        return self._stdout.text

    def wait_for_log(self, pattern: str, timeout: float = 10) -> bool:
        return self._stderr.wait_for(re.compile(pattern), timeout) is not None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Send `sig` (SIGTERM: graceful shutdown), wait, kill on timeout; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"fulmen did not stop within {timeout}s of {sig!r}:\n{self.output}")
        self._drain()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._drain()

    def _drain(self) -> None:
        self._stdout.thread.join(5)
        self._stderr.thread.join(5)

    def request(self, method: str = "GET", path: str = "/", body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
        """One HTTP/1.1 request over TCP or the Unix socket; returns (status, headers, body)."""
        if self.uds:
            conn: http.client.HTTPConnection = _UnixHTTPConnection(self.uds, timeout=timeout)
        else:
            assert self.port is not None, self.address
            host = self.url.split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
            conn = http.client.HTTPConnection(host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


@pytest.fixture
def server():
    """Factory: server("hello:app", "--threads", "2", env={...}, pass_fds=(fd,)) starts fulmen on
    127.0.0.1 and a free port (unless the args say otherwise) and returns a ready Server; every
    server still running is killed at the end of the test. command=[...] runs that instead
    (e.g. a script calling fulmen.run())."""
    started: list[Server] = []

    def start(app_spec: str | None = None, *extra_args: str, env: dict[str, str | None] | None = None,
              pass_fds=(), command: list[str] | None = None) -> Server:
        if command is not None:
            srv = Server(command, env, pass_fds)
            started.append(srv)
            return srv
        args = [*extra_args]
        chosen = any(a.startswith(("--port", "--uds", "--fd")) for a in args) or any(
            k in (env or {}) for k in ("FULMEN_PORT", "FULMEN_UDS", "FULMEN_FD"))
        if not chosen:
            args = ["--port", "0", *args]
        if app_spec is not None:
            args.append(app_spec)
        srv = Server([sys.executable, "-m", "fulmen", *args], env, pass_fds)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.kill()


@pytest.fixture(scope="module")
def shared_server():
    """Like `server`, but one process per distinct command line for the whole test module (for
    tests that only send requests and leave no state behind); all are killed at module end."""
    running: dict[tuple, Server] = {}

    def start(app_spec: str, *extra_args: str) -> Server:
        key = (app_spec, *extra_args)
        srv = running.get(key)
        if srv is None or srv.proc.poll() is not None:
            srv = Server([sys.executable, "-m", "fulmen", "--port", "0", *extra_args, app_spec], None)
            running[key] = srv
        return srv

    yield start
    for srv in running.values():
        srv.kill()


# ---- ASGI: the server under test is selectable ---------------------------------------------------
#
# FULMEN_TEST_ASGI_SERVER=uvicorn runs the ASGI suites against Uvicorn (uvicorn[standard]:
# httptools + uvloop), to check the tests' expectations against the reference server; the default
# is fulmen. Options are given by meaning (root_path=, graceful_timeout=, ...) and spelled for
# each server.

ASGI_SERVER = os.environ.get("FULMEN_TEST_ASGI_SERVER", "fulmen").strip().lower() or "fulmen"
if ASGI_SERVER not in ("fulmen", "uvicorn"):
    raise pytest.UsageError(f"FULMEN_TEST_ASGI_SERVER={ASGI_SERVER!r}: expected 'fulmen' or 'uvicorn'")

# `uvicorn --fd N`, except that Uvicorn wraps the inherited descriptor as AF_UNIX whatever it is
# (socket.fromfd(fd, AF_UNIX, ...)), which garbles scope["client"] and scope["server"] for a TCP
# socket; this shim lets the socket module read the real family from the descriptor.
_UVICORN_SHIM = (
    "import os, socket, sys\n"
    "socket.fromfd = lambda fd, family=-1, type=-1, proto=-1: socket.socket(fileno=os.dup(fd))\n"
    "from uvicorn.main import main\n"
    "sys.argv[0] = 'uvicorn'\n"
    "main()\n"
)
# Every ASGI test runs on each event loop the server can use: the standard asyncio loop and, when
# installed, uvloop. The two take different paths into the engine on some Pythons (asgi.cpp,
# start_task), and apps must behave the same on both.
try:
    import uvloop  # noqa: F401
    ASGI_LOOPS = ("asyncio", "uvloop")
except ImportError:
    ASGI_LOOPS = ("asyncio",)

UVICORN_READY = re.compile(r"Uvicorn running on (.+) \(Press")


# --ws by meaning -> Uvicorn's spelling. "on" is Uvicorn's current implementation (websockets'
# Sans-I/O layer, which is also what its "auto" picks when websockets is installed); its
# "websockets" is the deprecated implementation on websockets.legacy.
_UVICORN_WS = {"auto": "auto", "on": "websockets-sansio", "off": "none"}


def asgi_command(app_spec: str, *, root_path: str | None = None, graceful_timeout: float | None = None,
                 timeout_keep_alive: float | None = None, access_log: bool = True,
                 interface: str | None = "asgi", extra: tuple[str, ...] = (), fd: int | None = None,
                 loop: str | None = None, ws: str | None = None, ws_max_size: int | None = None,
                 ws_ping_interval: float | None = None, ws_ping_timeout: float | None = None,
                 ws_per_message_deflate: bool | None = None) -> list[str]:
    """The command line serving `app_spec` with the server under test (fd: the listening socket
    Uvicorn inherits). interface=None leaves Fulmen's --interface to its default (auto).
    WebSocket options: ws "auto"/"on"/"off", ws_max_size (bytes), ws_ping_interval and
    ws_ping_timeout (seconds), ws_per_message_deflate (bool); None keeps the server's default."""
    if ASGI_SERVER == "uvicorn":
        args = [sys.executable, "-c", _UVICORN_SHIM, "--fd", str(fd), "--app-dir", str(APPS)]
        if graceful_timeout is not None:
            args += ["--timeout-graceful-shutdown", str(graceful_timeout)]
        if ws is not None:
            args += ["--ws", _UVICORN_WS[ws]]
    else:
        args = [sys.executable, "-m", "fulmen", "--port", "0"]
        if interface is not None:
            args += ["--interface", interface]
        if graceful_timeout is not None:
            args += ["--graceful-timeout", str(graceful_timeout)]
        if ws is not None:
            assert ws in ("auto", "on", "off"), ws
            args += ["--ws", ws]
    # Spelled the same by both servers.
    if ws_max_size is not None:
        args += ["--ws-max-size", str(ws_max_size)]
    if ws_ping_interval is not None:
        args += ["--ws-ping-interval", str(ws_ping_interval)]
    if ws_ping_timeout is not None:
        args += ["--ws-ping-timeout", str(ws_ping_timeout)]
    if ws_per_message_deflate is not None:
        args += ["--ws-per-message-deflate", "true" if ws_per_message_deflate else "false"]
    if root_path is not None:
        args += ["--root-path", root_path]
    if timeout_keep_alive is not None:
        args += ["--timeout-keep-alive", str(timeout_keep_alive)]
    if not access_log:
        args.append("--no-access-log")
    if loop is not None:
        args += ["--loop", loop]
    return [*args, *extra, app_spec]


def start_asgi(app_spec: str, env: dict[str, str | None] | None = None, **options) -> Server:
    """Starts the ASGI server under test on 127.0.0.1 and a free port; returns a ready Server
    (.port, .url, .proc, .output as for fulmen)."""
    if ASGI_SERVER == "fulmen":
        return Server(asgi_command(app_spec, **options), env)
    # Uvicorn cannot report the port it got for --port 0: bind here, hand the socket over with
    # --fd, and close our copy once the child has it (so that after it exits, connecting is refused).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(2048)
        port = sock.getsockname()[1]
        srv = Server(asgi_command(app_spec, fd=sock.fileno(), **options), env, pass_fds=(sock.fileno(),),
                     ready=UVICORN_READY)
    finally:
        sock.close()
    srv.port = port
    srv.url = f"http://127.0.0.1:{port}"
    return srv


@pytest.fixture(scope="session")
def asgi_kind() -> str:
    """"fulmen" or "uvicorn": which server the ASGI suites run against."""
    return ASGI_SERVER


@pytest.fixture(params=ASGI_LOOPS)
def asgi_loop(request) -> str:
    """The --loop the ASGI server under test runs with (each test runs on every one)."""
    return request.param


@pytest.fixture(scope="module", params=ASGI_LOOPS)
def shared_asgi_loop(request) -> str:
    return request.param


@pytest.fixture
def asgi_server(asgi_loop):
    """Factory: asgi_server("asgi_probe:app", root_path=..., graceful_timeout=..., env={...})
    starts the ASGI server under test and returns a ready Server; all are killed at test end."""
    started: list[Server] = []

    def start(app_spec: str, env: dict[str, str | None] | None = None, **options) -> Server:
        options.setdefault("loop", asgi_loop)
        srv = start_asgi(app_spec, env, **options)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.kill()


@pytest.fixture(scope="module")
def shared_asgi_server(shared_asgi_loop):
    """Like asgi_server, but one process per distinct set of options for the whole module."""
    running: dict[tuple, Server] = {}

    def start(app_spec: str, **options) -> Server:
        options.setdefault("loop", shared_asgi_loop)
        key = (app_spec, *sorted(options.items()))
        srv = running.get(key)
        if srv is None or srv.proc.poll() is not None:
            srv = running[key] = start_asgi(app_spec, **options)
        return srv

    yield start
    for srv in running.values():
        srv.kill()
