"""Serve an ASGI app: the event loop, the lifespan protocol and the signals.

Everything here runs once at start-up or shutdown. Requests never pass through this module: the
engine (fulmen._core) watches its epoll fd from the loop and calls the app itself.

The lifespan follows Uvicorn's semantics (https://asgi.readthedocs.io/en/latest/specs/lifespan.html):
- auto: an app that raises before answering lifespan.startup does not support the protocol; we
  say so at info level and serve without lifespan. lifespan.startup.failed is still fatal.
- on: lifespan.startup.failed or an exception during startup is fatal: exit code 3.
- off: the app never sees a lifespan scope.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from typing import Any, Awaitable, Callable

from fulmen import FulmenError, __version__, _importer, _sockets
from fulmen import server as _server

error_log = _server.error_log

STARTUP_FAILURE = 3  # Uvicorn's exit code when the application's startup fails


class LifespanStartupFailed(FulmenError):
    """The app failed its lifespan startup; the command exits with code 3, as Uvicorn does."""

    exit_code = STARTUP_FAILURE


class ASGI2App:
    """An ASGI 2 "double callable" (app(scope) returns an instance, then instance(receive, send)
    is awaited) presented as an ASGI 3 app."""

    __slots__ = ("app",)

    def __init__(self, app: Callable[[dict], Callable[..., Awaitable[None]]]) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await self.app(scope)(receive, send)


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event-loop constructor for --loop (auto: uvloop when installed, else asyncio)."""
    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise FulmenError("--loop uvloop: uvloop is not installed (pip install uvloop), "
                                  "or use --loop asyncio") from None
        else:
            if sys.version_info < (3, 12):
                return _uvloop_with_dict(uvloop)
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def _uvloop_with_dict(uvloop: Any) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's Loop, subclassed only to have an instance __dict__. Before Python 3.12, Fulmen
    starts each request's Task eagerly by catching its first call_soon on the loop instance
    (src/bridge/asgi.cpp, start_task); uvloop's own type has no instance dict to do that in."""

    class Loop(uvloop.Loop):  # type: ignore[misc, name-defined]
        pass

    return Loop


def serve_asgi(cfg: dict[str, Any], app: Callable[..., Awaitable[None]], listeners: _sockets.Listeners,
               new_loop: Callable[[], asyncio.AbstractEventLoop] | None = None) -> None:
    """Serve the ASGI 3 callable `app` on `listeners` until SIGINT/SIGTERM; returns after the
    lifespan shutdown. Raises FulmenError (LifespanStartupFailed if the app's startup failed)."""
    loop = (new_loop or loop_factory(cfg["loop"]))()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(_Runner(cfg, app, listeners).main())
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


class _Runner:
    """One run of the main coroutine: lifespan startup, serve, lifespan shutdown."""

    def __init__(self, cfg: dict[str, Any], app: Callable[..., Awaitable[None]],
                 listeners: _sockets.Listeners) -> None:
        self.cfg = cfg
        self.app = app
        self.listeners = listeners
        self.server: Any = None  # the engine, while it serves
        self.stopping = False  # a first signal came: shut down gracefully
        self.forced = False  # a second one came: stop now, skip the lifespan shutdown (as Uvicorn)
        self.main_task: asyncio.Task | None = None
        self.worker = cfg.get("_worker") is not None  # forked by a supervisor

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self.main_task = asyncio.current_task()
        cfg = self.cfg
        if cfg["threads"] > 1:
            error_log.warning("--threads %d is ignored: ASGI apps run on the event loop", cfg["threads"])
        error_log.info("Starting Fulmen %s (ASGI, %s)", __version__, _loop_name(loop))
        lifespan = None if cfg["lifespan"] == "off" else Lifespan(self.app, cfg["lifespan"])
        restore = self._install_signal_handlers(loop)
        try:
            await self._serve(loop, lifespan)
        except asyncio.CancelledError:
            if not self.forced:  # not our own "stop now"
                raise
        finally:
            restore()

    async def _serve(self, loop: asyncio.AbstractEventLoop, lifespan: Lifespan | None) -> None:
        core = _server._load_core()
        if not hasattr(core.Server, "serve_asyncio"):
            raise FulmenError("this build of the native engine fulmen._core cannot serve ASGI apps; "
                              "rebuild Fulmen (`make build` or `pip install .`)")
        state: dict[str, Any] = {}
        if lifespan is not None:
            await lifespan.startup()
            state = lifespan.state
        if not self.stopping:  # a signal during startup: skip serving, still run the shutdown
            self.server = core.Server(self.app, self.listeners.engine_tuples(), interface="asgi",
                                      **_server.engine_options(self.cfg))
            try:
                bridge = _bench_bridge()
                done = (self.server.serve_asyncio(loop, state) if bridge == "reader"
                        else self.server.serve_asyncio(loop, state, bridge=bridge))
            except OSError as exc:
                raise FulmenError(f"could not start serving on {self._where()}: {exc}") from None
            _server.announce_listening(self.cfg, self.listeners)
            try:
                await done
            except OSError as exc:
                raise FulmenError(f"could not serve on {self._where()}: {exc}") from None
            finally:
                self.server = None
        if lifespan is not None and not self.forced:
            await lifespan.shutdown()

    def _where(self) -> str:
        return ", ".join(listener.url for listener in self.listeners)

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # signals reach only the main thread; the embedder stops us
        # A worker leaves SIGINT ignored and takes every TERM as graceful (see
        # server._run_with_signals); its supervisor sends QUIT to stop now.
        sigs = (signal.SIGTERM, signal.SIGQUIT) if self.worker else (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)
        previous = {sig: signal.getsignal(sig) for sig in sigs}
        for sig in sigs:
            loop.add_signal_handler(sig, self._on_signal, sig)
        previous[signal.SIGUSR1] = signal.getsignal(signal.SIGUSR1)
        loop.add_signal_handler(signal.SIGUSR1, _server.reopen_log_files)  # logrotate

        def restore() -> None:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                if handler is not None:  # None: installed outside Python, cannot be restored
                    signal.signal(sig, handler)

        return restore

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if sig == signal.SIGQUIT and not self.forced:  # Gunicorn's "quick shutdown": stop now
            self.stopping = True
        if not self.stopping:
            self.stopping = True
            error_log.info("Shutting down (%s): finishing in-flight requests for up to %gs%s", name,
                           self.cfg["graceful_timeout"], "" if self.worker else "; press Ctrl-C again to stop now")
            if self.server is not None:
                self.server.stop()
        elif self.worker and sig != signal.SIGQUIT:
            pass  # the same stop, relayed by the supervisor
        else:
            error_log.info("Stopping now (%s)", name)
            self.forced = True
            if self.server is not None:
                self.server.stop(graceful=False)
            elif self.main_task is not None:
                self.main_task.cancel()  # waiting for the app's lifespan: give up on it


class Lifespan:
    """The server side of the ASGI lifespan protocol for one app."""

    def __init__(self, app: Callable[..., Awaitable[None]], mode: str) -> None:
        self.app = app
        self.mode = mode  # "auto" or "on"
        self.state: dict[str, Any] = {}
        self._receive_queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._started = asyncio.Event()  # startup answered (complete or failed) or the app ended
        self._stopped = asyncio.Event()  # shutdown answered or the app ended
        self._startup_failed: str | None = None  # the app's lifespan.startup.failed message
        self._shutdown_failed: str | None = None
        self._error: BaseException | None = None  # what the app raised
        self._unsupported = False
        self._shutdown_sent = False
        self._task: asyncio.Task | None = None

    async def startup(self) -> None:
        """Send lifespan.startup and wait for the answer. Raises LifespanStartupFailed."""
        error_log.info("Waiting for application startup.")
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._receive_queue.put({"type": "lifespan.startup"})
        await self._started.wait()
        if self._startup_failed is not None:
            raise LifespanStartupFailed(f"application startup failed: {self._startup_failed or '(no message)'}")
        if self._error is not None:
            if self.mode == "on":
                raise LifespanStartupFailed(
                    f"application startup failed: {type(self._error).__name__}: {self._error} "
                    "(traceback above)", _importer._format_exc(self._error))
            self._unsupported = True
            return
        error_log.info("Application startup complete.")

    async def shutdown(self) -> None:
        """Send lifespan.shutdown and wait for the answer (failures are logged, not raised)."""
        if self._unsupported or self._error is not None:
            return
        error_log.info("Waiting for application shutdown.")
        self._shutdown_sent = True
        await self._receive_queue.put({"type": "lifespan.shutdown"})
        await self._stopped.wait()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # it answered but did not return; nothing may outlive the loop
        if self._shutdown_failed is not None:
            error_log.error("Application shutdown failed: %s", self._shutdown_failed or "(no message)")
        elif self._error is None:
            error_log.info("Application shutdown complete.")

    async def _run(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "2.0" if isinstance(self.app, ASGI2App) else "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            raise  # by us, at the end: the app answered shutdown but did not return, or "stop now"
        except BaseException as exc:
            self._error = exc
            if self._startup_failed is not None or self._shutdown_failed is not None:
                pass  # it said why already
            elif self.mode == "auto" and not self._started.is_set():
                error_log.info("ASGI 'lifespan' protocol appears unsupported.",
                               exc_info=exc if error_log.isEnabledFor(logging.DEBUG) else None)
            elif self._started.is_set():  # after a successful startup: a real failure in any mode
                error_log.error("Exception in 'lifespan' protocol", exc_info=exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            self._started.set()
            self._stopped.set()

    async def _receive(self) -> dict[str, Any]:
        return await self._receive_queue.get()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "lifespan.startup.complete" or kind == "lifespan.startup.failed":
            if self._started.is_set():
                raise RuntimeError(f"ASGI lifespan: {kind!r} sent after startup was already answered")
            if kind == "lifespan.startup.failed":
                self._startup_failed = str(message.get("message", ""))
            self._started.set()
        elif kind == "lifespan.shutdown.complete" or kind == "lifespan.shutdown.failed":
            if not self._shutdown_sent or self._stopped.is_set():
                raise RuntimeError(f"ASGI lifespan: {kind!r} sent before lifespan.shutdown was received "
                                   "or after it was answered")
            if kind == "lifespan.shutdown.failed":
                self._shutdown_failed = str(message.get("message", ""))
            self._stopped.set()
        else:
            raise RuntimeError(f"ASGI lifespan: unexpected message {message!r}; expected one of "
                               "lifespan.startup.complete/failed, lifespan.shutdown.complete/failed")


BENCH_BRIDGES = ("reader", "poll", "hop")


def _bench_bridge() -> str:
    """FULMEN_BENCH_ASGI_BRIDGE: for the benchmark only, serve with one of the engine/loop designs
    Fulmen is measured against ("poll", "hop"); "reader" (the default) is Fulmen's own. See
    docs/architecture.md."""
    value = os.environ.get("FULMEN_BENCH_ASGI_BRIDGE", "").strip().lower() or "reader"
    if value not in BENCH_BRIDGES:
        raise FulmenError(f"FULMEN_BENCH_ASGI_BRIDGE={value}: expected one of {', '.join(BENCH_BRIDGES)} "
                          "(unset it to serve normally)")
    return value


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if any(c.__module__.startswith("uvloop") for c in type(loop).__mro__) else "asyncio"


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """What asyncio.run() does before closing its loop: cancel what the app left running."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler({"message": "unhandled exception during shutdown",
                                         "exception": task.exception(), "task": task})
