"""Start one server: logging, app, socket, engine, signals. Used by fulmen.run() and the CLI.

Everything here runs once at start-up or shutdown; requests are handled entirely by the engine,
which calls only the application (and error_log on errors).
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import resource
import signal
import sys
import threading
from typing import Any, Callable, TextIO

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


def configure_logging(level: str, access: bool, error_stream: TextIO | None = None) -> None:
    logging.addLevelName(TRACE, "TRACE")
    formatter = logging.Formatter(LOG_FORMAT, DATE_FORMAT)
    for logger, stream in ((error_log, error_stream or sys.stderr), (access_log, sys.stdout)):
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


class _LogFile:
    """A log file opened by Fulmen (--access-logfile, --error-logfile). The descriptor stays the
    same for the process's life: reopen() opens the path again and dup2()s the new file onto it,
    so the engine (which writes the access log to the descriptor) and the error log's stream
    follow a rotation without being told."""

    def __init__(self, path: str, option: str) -> None:
        self.path = path
        self.option = option
        self.fd = self._open()
        self.stream: TextIO | None = None  # the error log's text stream over fd, if any

    def _open(self) -> int:
        try:
            # O_APPEND: every write lands at the end, so workers sharing the file never overwrite
            # each other, and a line written with one write() is never split by another's.
            return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise FulmenError(f"cannot open {self.option} {self.path}: {exc.strerror or exc}") from None

    def reopen(self) -> None:
        if self.stream is not None:
            self.stream.flush()
        fd = self._open()
        try:
            os.dup2(fd, self.fd, inheritable=False)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()  # closes fd too
        else:
            os.close(self.fd)


_log_files: dict[str, _LogFile] = {}  # "access" / "error" while open


def error_log_stream() -> TextIO:
    """Where the error log goes: the --error-logfile stream, else stderr (for faulthandler and
    tracebacks printed outside logging)."""
    f = _log_files.get("error")
    return f.stream if f is not None and f.stream is not None else sys.stderr


def setup_logging(cfg: dict[str, Any]) -> None:
    """The error log (stream or --error-logfile, then --log-config) and the access log's file."""
    opened: dict[str, _LogFile] = {}
    try:
        if cfg.get("error_logfile", "-") != "-":
            f = opened["error"] = _LogFile(cfg["error_logfile"], "--error-logfile")
            f.stream = open(f.fd, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
        if cfg["access_log"] and cfg.get("access_logfile", "-") != "-":
            opened["access"] = _LogFile(cfg["access_logfile"], "--access-logfile")
    except FulmenError:
        for f in opened.values():
            f.close()
        raise
    configure_logging(cfg["log_level"], cfg["access_log"], opened["error"].stream if "error" in opened else None)
    # Files of an earlier run() in this process: closed only now that no handler uses them.
    for f in _log_files.values():
        f.close()
    _log_files.clear()
    _log_files.update(opened)
    if cfg.get("log_config"):
        sources = getattr(cfg, "sources", {})
        given = sources.get("log_level", "cli") != "default"
        apply_log_config(cfg["log_config"], cfg["log_level"] if given else None)


def apply_log_config(path: str, level: str | None) -> None:
    """--log-config, as Uvicorn reads it: .json and .yaml/.yml are dictConfig dictionaries,
    anything else is a logging.fileConfig file. Loggers that exist already (Fulmen's own, the
    app's) stay enabled unless the file says otherwise. `level`, when the user gave --log-level,
    is then applied to fulmen.error (the file decides otherwise)."""
    option = f"--log-config {path}"
    try:
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as fh:
                conf = json.load(fh)
        elif path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise FulmenError(f"{option}: reading YAML needs PyYAML (pip install PyYAML); "
                                  "or write the configuration as .json") from None
            with open(path, encoding="utf-8") as fh:
                conf = yaml.safe_load(fh)
        else:
            if not os.path.isfile(path):
                raise FulmenError(f"{option}: no such file")
            logging.config.fileConfig(path, disable_existing_loggers=False)
            conf = None
        if conf is not None:
            if not isinstance(conf, dict):
                raise FulmenError(f"{option}: expected a dictConfig mapping (with version: 1)")
            conf.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(conf)
    except FulmenError:
        raise
    except OSError as exc:
        raise FulmenError(f"{option}: {exc.strerror or exc}") from None
    except Exception as exc:  # json/yaml syntax, dictConfig/fileConfig ValueError, KeyError, ...
        raise FulmenError(f"{option}: invalid logging configuration: {type(exc).__name__}: {exc}") from None
    if level is not None:
        error_log.setLevel(TRACE if level == "trace" else level.upper())


def reopen_log_files() -> None:
    """SIGUSR1: reopen --access-logfile and --error-logfile (after logrotate moved them)."""
    for f in list(_log_files.values()):
        try:
            f.reopen()
        except FulmenError as exc:
            error_log.error("SIGUSR1: %s; still writing to the old file", exc)
    # Handlers from --log-config that write files (FileHandler and its subclasses) too.
    for name in [None, *logging.root.manager.loggerDict]:
        logger = logging.getLogger(name)
        for h in getattr(logger, "handlers", ()):
            if isinstance(h, logging.FileHandler) and h.stream is not None:
                h.acquire()
                try:  # as Gunicorn's reopen_files
                    h.stream.close()
                    h.stream = h._open()
                except OSError as exc:
                    error_log.error("SIGUSR1: cannot reopen %s: %s", h.baseFilename, exc)
                finally:
                    h.release()
    error_log.info("Reopened the log files (SIGUSR1)")


def _access_log_fd(cfg: dict[str, Any]) -> int:
    if not cfg["access_log"]:
        return -1
    f = _log_files.get("access")
    return f.fd if f is not None else 1


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

    With --workers (any value, 1 included) a supervisor process binds the sockets and forks the
    workers (src/fulmen/supervisor.py); otherwise this process serves alone, as Uvicorn does."""
    setup_logging(cfg)
    if cfg.get("workers") is not None:
        from fulmen import supervisor

        supervisor.Supervisor(cfg).run()
        return
    loaded = load(cfg)
    raise_open_files_limit()
    listeners = _sockets.bind(cfg)
    try:
        serve_app(cfg, loaded, listeners)
    finally:
        listeners.close()
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


def serve_app(cfg: dict[str, Any], loaded: tuple[Any, str, Any], listeners: _sockets.Listeners) -> None:
    """Serve an app returned by load() on bound listeners until it is stopped."""
    app, kind, new_loop = loaded
    if kind == "wsgi":
        _serve_wsgi(cfg, app, listeners)
    else:
        from fulmen import _asgi

        _asgi.serve_asgi(cfg, app, listeners, new_loop)


def announce_listening(cfg: dict[str, Any], listeners: _sockets.Listeners) -> None:
    """The engine serves from now on: say so (a single process) or tell the supervisor (a worker,
    whose supervisor logs the address once)."""
    worker = cfg.get("_worker")
    if worker is None:
        for listener in listeners:
            error_log.info("Listening on %s", listener.url)
    else:
        worker.ready()
    sys.stdout.flush()  # the engine writes access lines to fd 1 directly


def _serve_wsgi(cfg: dict[str, Any], app: Any, listeners: _sockets.Listeners) -> None:
    core = _load_core()
    server = core.Server(app, listeners.engine_tuples(), threads=cfg["threads"], **engine_options(cfg))
    error_log.info("Starting Fulmen %s (WSGI, %d thread%s)", __version__, cfg["threads"],
                   "" if cfg["threads"] == 1 else "s")
    # Announced once the signal handlers are in place: a supervisor may stop a worker as soon as
    # it is ready, and a TERM before that would kill it instead of stopping it gracefully.
    _run_with_signals(server, cfg["graceful_timeout"], on_ready=lambda: announce_listening(cfg, listeners),
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
        access_log_fd=_access_log_fd(cfg),
        access_log_format=cfg.get("access_log_format"),
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
        limit_concurrency=cfg.get("limit_concurrency") or 0,
        proxy_headers=cfg.get("proxy_headers", False),
        forwarded_allow_ips=list(cfg.get("forwarded_allow_ips", ("127.0.0.1",))),
        forwarded_headers=list(cfg.get("forwarded_headers", ("x-forwarded-for", "x-forwarded-proto"))),
        proxy_protocol=cfg.get("proxy_protocol", False),
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
    # USR1 reopens the log files, as in Gunicorn (a supervisor forwards it to its workers).
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda signum, frame: reopen_log_files())
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
