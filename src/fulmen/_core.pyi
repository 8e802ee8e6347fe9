"""Type stubs for the private native module fulmen._core (built from src/bridge)."""

from typing import Any, Callable, Sequence

__version__: str

class ClientDisconnected(OSError):
    """Raised by an ASGI WebSocket send() once the connection is closed or lost."""

def check_access_log_format(format: str) -> str | None:
    """None if the access-log format compiles, else a one-line message saying what is wrong."""

class Server:
    """One worker's engine: an epoll loop serving HTTP/1.1 on already-listening sockets.

    listeners: (fd, server_name, server_port, is_unix) per socket. The sockets must be bound and
      listening; the engine makes them non-blocking and accepts on them. server_name/server_port
      become SERVER_NAME/SERVER_PORT in the WSGI environ for requests on that socket.
    app: the WSGI callable, or with interface="asgi" an ASGI 3 callable (served by
      serve_asyncio(), not run()).
    threads: 1 runs the app on the loop thread (fastest); N > 1 runs it in N Python threads.
    access_log_fd: file descriptor the engine writes access-log lines to, -1 for none.
    access_log_format: "json" or a Gunicorn format ("%(h)s ..."), compiled once; None: Gunicorn's
      default. An invalid one raises ValueError.
    error_log: called as error_log(message: str, exc: BaseException | None) for app errors and
      engine warnings; it runs with the GIL held and must not raise.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        listeners: Sequence[tuple[int, str, int, bool]],
        *,
        error_log: Callable[[str, BaseException | None], None],
        threads: int = 1,
        root_path: str = "",
        url_scheme: str = "http",
        access_log_fd: int = -1,
        timeout_keep_alive: float = 5.0,
        timeout_request_header: float = 30.0,
        timeout_request_body: float = 60.0,
        limit_request_line: int = 8190,
        limit_request_fields: int = 100,
        limit_request_field_size: int = 8190,
        limit_request_body: int = 0,
        graceful_timeout: float = 30.0,
        interface: str = "wsgi",
        ws: bool = True,
        ws_max_size: int = 16777216,
        ws_ping_interval: float = 20.0,
        ws_ping_timeout: float = 20.0,
        ws_per_message_deflate: bool = True,
        access_log_format: str | None = None,
        shutdown_listeners: bool = True,
        supervisor_fd: int = -1,
        heartbeat_interval: float = 0.0,
        max_requests: int = 0,
        multiprocess: bool = False,
    ) -> None: ...
    def serve_asyncio(self, loop: Any, state: dict[str, Any] | None = None, *, bridge: str = "reader") -> Any:
        """interface="asgi" only: serve on a running asyncio/uvloop loop (the engine's epoll fd is
        watched with loop.add_reader; bridge="poll" or "hop" are the alternative designs the
        benchmark measures: steps polled from loop callbacks, or a thread that waits for I/O and
        hands each wake-up to the loop). Call from a coroutine on that loop. Returns a future that
        resolves once serving stopped (after stop() and the graceful shutdown); it raises OSError if
        the server could not start, or the KeyboardInterrupt/SystemExit an app raised. Each
        request's scope["state"] is a shallow copy of `state`."""
    @property
    def wakeup_fd(self) -> int:
        """Write end of the loop's wake pipe: pass it to signal.set_wakeup_fd() so a signal
        interrupts the C++ epoll_wait and Python signal handlers run promptly."""
    def run(self) -> None:
        """Serve until stop() is called; returns after the graceful shutdown completes.
        Raises the exception a Python signal handler raised (e.g. KeyboardInterrupt) only if
        it was not a stop request; the CLI's handlers call stop() instead of raising."""
    def stop(self, graceful: bool = True) -> None:
        """Ask the loop to stop: stop accepting, close idle keep-alive connections, let
        in-flight requests finish for up to graceful_timeout seconds (graceful=False: close
        everything now). Safe to call from a signal handler or another thread."""
    def stats(self) -> dict[str, int]:
        """Counters: connections_open, connections_total, requests_total, ..."""
