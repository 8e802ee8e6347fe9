"""Start one server: logging, app, socket, engine, signals. Used by fulmen.run() and the CLI.

Everything here runs once at start-up or shutdown; requests are handled entirely by the engine,
which calls only the application (and error_log on errors).
"""

from __future__ import annotations

import logging
import resource
import signal
import sys
import threading
from typing import Any, Callable

from fulmen import FulmenError, __version__, _importer, _sockets

TRACE = 5
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"
# Gunicorn caps the header count at 32768 and treats 0 as that cap; the engine always enforces
# its limits, so "no limit" for the line and field sizes becomes a bound no request reaches
# (the engine's own request-head budget still applies).
MAX_HEADER_FIELDS = 32768
NO_LIMIT = 2**31 - 1

error_log = logging.getLogger("fulmen.error")
access_log = logging.getLogger("fulmen.access")


def configure_logging(level: str, access: bool) -> None:
    logging.addLevelName(TRACE, "TRACE")
    formatter = logging.Formatter(LOG_FORMAT, DATE_FORMAT)
    for logger, stream in ((error_log, sys.stderr), (access_log, sys.stdout)):
        # Replace only handlers we installed, so repeated run() calls do not duplicate lines.
        for h in [h for h in logger.handlers if getattr(h, "_fulmen", False)]:
            logger.removeHandler(h)
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        handler._fulmen = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    error_log.setLevel(TRACE if level == "trace" else level.upper())
    # The engine writes access lines to stdout itself; this logger exists for lines from Python.
    access_log.setLevel(logging.INFO)
    access_log.disabled = not access


def _log_engine_error(message: str, exc: BaseException | None) -> None:
    """The engine's error_log callback: it runs with the GIL held and must never raise."""
    try:
        error_log.error(message, exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None)
    except Exception:
        pass


def _load_core() -> Any:
    try:
        from fulmen import _core
    except ImportError as exc:
        raise FulmenError(f"the native engine fulmen._core is not available ({exc}); "
                          "build and install Fulmen with `make build` or `pip install .`") from None
    return _core


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one, as nginx's worker_rlimit_nofile does:
    every connection is a descriptor, and a soft limit of 1024 would cap a worker holding idle
    WebSocket or keep-alive connections far below what it can serve."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20  # what Linux allows at most by default (fs.nr_open)
        if soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        error_log.debug("could not raise the open files limit: %s", exc)


def serve(cfg: dict[str, Any]) -> None:
    """Serve until SIGINT/SIGTERM (or until the engine stops). Raises FulmenError.

    With --workers (any value, 1 included) a supervisor process binds the socket and forks the
    workers (src/fulmen/supervisor.py); otherwise this process serves alone, as Uvicorn does."""
    configure_logging(cfg["log_level"], cfg["access_log"])
    if cfg.get("workers") is not None:
        from fulmen import supervisor

        supervisor.Supervisor(cfg).run()
        return
    loaded = load(cfg)
    raise_open_files_limit()
    listener = _sockets.bind(cfg)
    try:
        serve_app(cfg, loaded, listener)
    finally:
        listener.close()
    error_log.info("Finished")


def load(cfg: dict[str, Any]) -> tuple[Any, str, Any]:
    """Import the app and settle how to serve it: (app, kind, loop factory or None). Creates no
    thread and no event loop, so a supervisor may call it before forking (--preload)."""
    app = _importer.load_app(cfg["app"], factory=cfg["factory"], app_dir=cfg["app_dir"])
    kind = interface_of(cfg, app)
    new_loop = None
    if kind != "wsgi":
        from fulmen import _asgi

        new_loop = _asgi.loop_factory(cfg["loop"])  # a missing uvloop is an error before binding
        if kind == "asgi2":
            app = _asgi.ASGI2App(app)
    return app, kind, new_loop


def serve_app(cfg: dict[str, Any], loaded: tuple[Any, str, Any], listener: _sockets.Listener) -> None:
    """Serve an app returned by load() on a bound listener until it is stopped."""
    app, kind, new_loop = loaded
    if kind == "wsgi":
        _serve_wsgi(cfg, app, listener)
    else:
        from fulmen import _asgi

        _asgi.serve_asgi(cfg, app, listener, new_loop)


def announce_listening(cfg: dict[str, Any], listener: _sockets.Listener) -> None:
    """The engine serves from now on: say so (a single process) or tell the supervisor (a worker,
    whose supervisor logs the address once)."""
    worker = cfg.get("_worker")
    if worker is None:
        error_log.info("Listening on %s", listener.url)
    else:
        worker.ready()
    sys.stdout.flush()  # the engine writes access lines to fd 1 directly


def _serve_wsgi(cfg: dict[str, Any], app: Any, listener: _sockets.Listener) -> None:
    core = _load_core()
    server = core.Server(app, [listener.engine_tuple()], threads=cfg["threads"], **engine_options(cfg))
    error_log.info("Starting Fulmen %s (WSGI, %d thread%s)", __version__, cfg["threads"],
                   "" if cfg["threads"] == 1 else "s")
    # Announced once the signal handlers are in place: a supervisor may stop a worker as soon as
    # it is ready, and a TERM before that would kill it instead of stopping it gracefully.
    _run_with_signals(server, cfg["graceful_timeout"], on_ready=lambda: announce_listening(cfg, listener),
                      worker=cfg.get("_worker") is not None)


def interface_of(cfg: dict[str, Any], app: Any) -> str:
    """'wsgi', 'asgi3' or 'asgi2': what to serve `app` as, given --interface."""
    if cfg["interface"] == "wsgi":
        return "wsgi"
    detected = _importer.detect_interface(app)
    if cfg["interface"] == "asgi" and detected == "wsgi":
        error_log.warning("--interface asgi: %s does not look like an ASGI application (it is not a "
                          "coroutine function); serving it as ASGI 3 anyway", _app_name(cfg["app"]))
        return "asgi3"
    return detected


def engine_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """The core.Server keyword arguments both interfaces share."""
    return dict(
        error_log=_log_engine_error,
        root_path=cfg["root_path"],
        access_log_fd=1 if cfg["access_log"] else -1,
        timeout_keep_alive=float(cfg["timeout_keep_alive"]),
        limit_request_line=cfg["limit_request_line"] or NO_LIMIT,
        limit_request_fields=cfg["limit_request_fields"] or MAX_HEADER_FIELDS,
        limit_request_field_size=cfg["limit_request_field_size"] or NO_LIMIT,
        limit_request_body=cfg["limit_request_body"],
        graceful_timeout=float(cfg["graceful_timeout"]),
        ws=cfg["ws"] != "off",
        ws_max_size=cfg["ws_max_size"],
        ws_ping_interval=float(cfg["ws_ping_interval"]),
        ws_ping_timeout=float(cfg["ws_ping_timeout"]),
        ws_per_message_deflate=cfg["ws_per_message_deflate"],
        **(cfg["_worker"].engine_options() if cfg.get("_worker") is not None else {}),
    )


def _run_with_signals(server: Any, graceful_timeout: float, on_ready: Callable[[], None] = lambda: None,
                      worker: bool = False) -> None:
    """Serve until a signal stops us. A worker (under a supervisor) leaves SIGINT ignored and
    takes every TERM as graceful: Ctrl-C or a TERM to the whole process group (systemd's
    default) also reaches the supervisor, which relays it, and must not count as a second signal;
    the supervisor sends QUIT to stop now."""
    if threading.current_thread() is not threading.main_thread():
        # Python delivers signals only to the main thread; the caller stops us with server.stop().
        on_ready()
        server.run()
        return

    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        if signum == signal.SIGQUIT:  # Gunicorn's "quick shutdown"
            error_log.info("Stopping now (%s)", signal.Signals(signum).name)
            stopping = True
            server.stop(graceful=False)
        elif not stopping:
            stopping = True
            error_log.info("Shutting down (%s): finishing in-flight requests for up to %gs%s",
                           signal.Signals(signum).name, graceful_timeout,
                           "" if worker else "; press Ctrl-C again to stop now")
            server.stop()
        elif worker:
            pass  # the same stop, relayed by the supervisor
        else:
            error_log.info("Stopping now (%s)", signal.Signals(signum).name)
            server.stop(graceful=False)

    sigs = (signal.SIGTERM, signal.SIGQUIT) if worker else (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)
    previous = {sig: signal.signal(sig, on_signal) for sig in sigs}
    # USR1 (reopen log files, as in Gunicorn; a supervisor forwards it to its workers) must never
    # kill the server: there is nothing to reopen yet, so it is a no-op for now.
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    # The engine sleeps in C++ epoll_wait; the wakeup fd makes a signal wake it so that Python
    # runs on_signal promptly. A full pipe already means a pending wake-up: no warning needed.
    previous_fd = signal.set_wakeup_fd(server.wakeup_fd, warn_on_full_buffer=False)
    try:
        on_ready()
        server.run()
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            if handler is not None:  # None: installed outside Python, cannot be restored
                signal.signal(sig, handler)


def _app_name(app: Any) -> str:
    return app if isinstance(app, str) else getattr(app, "__qualname__", "the application")
