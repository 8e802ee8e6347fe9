"""ASGI lifespan and the ASGI start-up/shutdown sequence.

Through the real `python -m fulmen` process where the engine can serve ASGI; the Python side
(lifespan protocol, signals, loop choice) also in-process with a stand-in engine, so that its
ordering and edge cases are checked exactly.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import types

import pytest

from conftest import APPS, run_fulmen


def _engine_serves_asgi() -> bool:
    try:
        from fulmen import _core
    except ImportError:
        return False
    return hasattr(_core.Server, "serve_asyncio")


needs_asgi_engine = pytest.mark.skipif(
    not _engine_serves_asgi(), reason="fulmen._core.Server has no serve_asyncio: the ASGI bridge is not built yet")

try:
    import uvloop  # noqa: F401
    LOOPS = ["asyncio", "uvloop"]
except ImportError:
    LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skip(reason="uvloop is not installed"))]


def lines_in_order(log: str, *texts: str) -> bool:
    positions = [log.find(t) for t in texts]
    return all(p >= 0 for p in positions) and positions == sorted(positions)


def get_json(srv, path: str = "/") -> dict:
    status, _, body = srv.request("GET", path)
    assert status == 200, (status, body, srv.output)
    return json.loads(body)


# --- through the real server -----------------------------------------------------------------------


@needs_asgi_engine
@pytest.mark.parametrize("loop", LOOPS)
def test_startup_before_listening_state_in_requests_shutdown_on_sigterm(server, tmp_path, loop):
    marker = tmp_path / "marker"
    srv = server("lifespan_app:app", "--loop", loop, env={"FULMEN_TEST_MARKER": str(marker)})
    assert marker.read_text() == "startup\n"
    assert lines_in_order(srv.output, f"(ASGI, {loop})", "Waiting for application startup.",
                          "lifespan_app: startup ran", "Application startup complete.", "Listening on ")
    body = get_json(srv, "/hello")
    assert body["type"] == "http" and body["path"] == "/hello"
    assert body["state"] == {"db": "connected", "asgi": {"version": "3.0", "spec_version": "2.0"}, "shared": []}
    assert srv.stop(signal.SIGTERM) == 0
    assert marker.read_text() == "startup\nshutdown\n"
    assert lines_in_order(srv.output, "Shutting down (SIGTERM)", "Waiting for application shutdown.",
                          "lifespan_app: shutdown ran", "Application shutdown complete.", "Finished")


@needs_asgi_engine
def test_each_request_gets_a_shallow_copy_of_the_state(server):
    srv = server("lifespan_app:app")
    assert get_json(srv, "/mutate")["state"]["added_by_a_request"] is True  # its own copy changed
    state = get_json(srv, "/after")["state"]
    assert "added_by_a_request" not in state  # a new top-level key stays in that request's copy
    assert state["shared"] == ["x"]  # nested objects are the lifespan's own (shallow copy, as Uvicorn)


@needs_asgi_engine
def test_asgi2_app_gets_lifespan_too(server, tmp_path):
    marker = tmp_path / "marker"
    srv = server("lifespan_app:App2", env={"FULMEN_TEST_MARKER": str(marker)})
    assert get_json(srv)["state"]["asgi"] == {"version": "2.0", "spec_version": "2.0"}
    assert srv.stop() == 0
    assert marker.read_text() == "startup\nshutdown\n"


@needs_asgi_engine
def test_lifespan_off(server, tmp_path):
    marker = tmp_path / "marker"
    srv = server("lifespan_app:app", "--lifespan", "off", env={"FULMEN_TEST_MARKER": str(marker)})
    assert get_json(srv)["state"] == {}
    assert srv.stop() == 0
    assert not marker.exists()
    assert "application startup" not in srv.output.lower() and "lifespan" not in srv.output


@needs_asgi_engine
@pytest.mark.parametrize("app", ["no_lifespan", "raising"])
def test_auto_keeps_serving_an_app_without_lifespan_support(server, app):
    srv = server(f"lifespan_app:{app}")
    assert lines_in_order(srv.output, "[INFO] ASGI 'lifespan' protocol appears unsupported.", "Listening on ")
    assert "Traceback" not in srv.output  # info, not an error (the traceback only with --log-level debug)
    assert get_json(srv)["state"] == {}
    assert srv.stop() == 0
    assert "Waiting for application shutdown" not in srv.output and "Finished" in srv.output


@needs_asgi_engine
def test_auto_shows_the_traceback_at_debug_level(server):
    srv = server("lifespan_app:raising", "--log-level", "debug")
    assert "appears unsupported" in srv.output and "startup exploded in lifespan_app" in srv.output


@needs_asgi_engine
@pytest.mark.parametrize("mode", ["auto", "on"])
def test_startup_failed_message_exits_3(tmp_path, mode):
    # lifespan.startup.failed is fatal in both modes (Uvicorn: exit code 3, STARTUP_FAILURE).
    marker = tmp_path / "marker"
    result = run_fulmen("--port", "0", "--lifespan", mode, "lifespan_app:failing",
                        env={"FULMEN_TEST_MARKER": str(marker)})
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == "Error: application startup failed: database unreachable at db:5432", result.stderr
    assert "Listening on" not in result.stderr and "Traceback" not in result.stderr


@needs_asgi_engine
def test_startup_exception_with_lifespan_on_exits_3_with_the_traceback():
    result = run_fulmen("--port", "0", "--lifespan", "on", "lifespan_app:raising")
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: application startup failed: RuntimeError: startup exploded in lifespan_app (traceback above)")
    assert "Traceback" in result.stderr and "lifespan_app.py" in result.stderr
    assert "fulmen/_asgi.py" not in result.stderr  # only the app's frames
    assert "Listening on" not in result.stderr


@needs_asgi_engine
def test_lifespan_on_requires_support():
    result = run_fulmen("--port", "0", "--lifespan", "on", "lifespan_app:no_lifespan")
    assert result.returncode == 3, result.stderr
    assert "AssertionError: unsupported scope type lifespan" in result.stderr


@needs_asgi_engine
def test_shutdown_failure_is_logged_and_exit_code_stays_0(server, tmp_path):
    marker = tmp_path / "marker"
    srv = server("lifespan_app:shutdown_failing", env={"FULMEN_TEST_MARKER": str(marker)})
    assert srv.stop() == 0  # as Uvicorn: the server did run; the failure is in the log
    assert marker.read_text() == "shutdown\n"
    assert "[ERROR] Application shutdown failed: could not flush the queue" in srv.output


@needs_asgi_engine  # the engine is checked before the app's startup runs
def test_sigterm_during_startup_skips_serving_and_still_shuts_down(tmp_path):
    # The app's startup waits for a file; SIGTERM arrives meanwhile: no "Listening on", but the
    # app still gets lifespan.shutdown after its startup completes.
    script = tmp_path / "slow.py"
    gate, marker = tmp_path / "gate", tmp_path / "marker"
    script.write_text(
        "import asyncio, os, sys\n"
        "async def app(scope, receive, send):\n"
        "    assert scope['type'] == 'lifespan'\n"
        "    await receive()\n"
        "    print('startup waiting', file=sys.stderr, flush=True)\n"
        f"    while not os.path.exists({str(gate)!r}):\n"
        "        await asyncio.sleep(0.01)\n"
        "    await send({'type': 'lifespan.startup.complete'})\n"
        "    await receive()\n"
        f"    open({str(marker)!r}, 'w').write('shutdown')\n"
        "    await send({'type': 'lifespan.shutdown.complete'})\n")
    from conftest import fulmen_env

    proc = subprocess.Popen([sys.executable, "-m", "fulmen", "--port", "0", "--app-dir", str(tmp_path), "slow:app"],
                            env=fulmen_env(), stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "startup waiting" in line:
                break
        proc.send_signal(signal.SIGTERM)
        rest = []
        for line in proc.stderr:
            rest.append(line)
            if "Shutting down" in line:
                gate.write_text("")
                break
        rest += proc.stderr.readlines()
        assert proc.wait(15) == 0, "".join(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = "".join(rest)
    assert marker.read_text() == "shutdown" and "Listening on" not in log and "Finished" in log


# --- the Python side with a stand-in engine (runs without the ASGI bridge) ---------------------------


class FakeEngine:
    """Stands in for fulmen._core: Server records its arguments; serve_asyncio runs `requests`
    (coroutine functions taking the server) on the loop and resolves when stop() is called."""

    def __init__(self, requests=()):
        self.requests = list(requests)
        self.servers: list = []
        self.events: list = []
        engine = self

        class Server:
            def __init__(self, app, listeners, **kwargs):
                self.app, self.listeners, self.kwargs = app, listeners, kwargs
                self.done = None
                engine.servers.append(self)

            def serve_asyncio(self, loop, state):
                engine.events.append(("serve", dict(state)))
                self.state = state
                self.done = loop.create_future()
                for request in engine.requests:
                    loop.create_task(request(self))
                return self.done

            def stop(self, graceful=True):
                engine.events.append(("stop", graceful))
                if graceful and not self.done.done():
                    self.done.get_loop().call_soon(self.done.set_result, None)  # "in-flight requests finish"
                elif not graceful and not self.done.done():
                    self.done.set_result(None)

        self.module = types.SimpleNamespace(Server=Server)


@pytest.fixture
def fake_serve(monkeypatch):
    """serve(app, engine, **options): runs fulmen's ASGI serving in-process on a FakeEngine."""
    from fulmen import _asgi, _sockets, config, server

    def serve(app, engine, **options):
        monkeypatch.setattr(server, "_load_core", lambda: engine.module)
        server.configure_logging("info", False)
        cfg = config.from_kwargs({"port": 0, **options})
        cfg["app"] = app
        listener = _sockets.bind(cfg)
        try:
            _asgi.serve_asgi(cfg, app, listener)
        finally:
            listener.close()

    return serve


async def call(app, scope_type="http", state=None):
    """One HTTP request through `app`; returns what it sent."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app({"type": scope_type, "path": "/", "state": dict(state or {})}, receive, send)
    return sent


def _lifespan_app():
    sys.path.insert(0, str(APPS))
    try:
        import lifespan_app
    finally:
        sys.path.remove(str(APPS))
    return lifespan_app


def test_fake_engine_full_sequence(fake_serve, tmp_path, monkeypatch, capfd):
    lifespan_app = _lifespan_app()
    marker = tmp_path / "marker"
    monkeypatch.setenv("FULMEN_TEST_MARKER", str(marker))
    responses = []

    async def request_then_sigterm(srv):
        responses.append(await call(srv.app, state=srv.state))
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the loop's handler, not by pytest

    engine = FakeEngine([request_then_sigterm])
    previous = signal.getsignal(signal.SIGTERM)
    fake_serve(lifespan_app.app, engine, threads=3)
    assert signal.getsignal(signal.SIGTERM) is previous  # restored
    (srv,) = engine.servers
    assert srv.kwargs["interface"] == "asgi" and "threads" not in srv.kwargs
    assert engine.events == [("serve", {"db": "connected", "asgi": {"version": "3.0", "spec_version": "2.0"},
                                        "shared": []}), ("stop", True)]
    body = json.loads(responses[0][1]["body"])
    assert body["state"]["db"] == "connected"
    assert marker.read_text() == "startup\nshutdown\n"
    err = capfd.readouterr().err
    assert "--threads 3 is ignored: ASGI apps run on the event loop" in err
    assert lines_in_order(err, "Application startup complete.", "Listening on", "Shutting down (SIGTERM)",
                          "Application shutdown complete.")


def test_fake_engine_second_signal_stops_now_and_skips_lifespan_shutdown(fake_serve, tmp_path, monkeypatch):
    lifespan_app = _lifespan_app()
    marker = tmp_path / "marker"
    monkeypatch.setenv("FULMEN_TEST_MARKER", str(marker))

    async def two_signals(srv):
        srv.stop = lambda graceful=True: engine.events.append(("stop", graceful)) or (
            None if graceful else srv.done.set_result(None))  # the graceful stop never finishes
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(0)
        while ("stop", True) not in engine.events:
            await asyncio.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    engine = FakeEngine([two_signals])
    fake_serve(lifespan_app.app, engine)
    assert engine.events[1:] == [("stop", True), ("stop", False)]
    assert marker.read_text() == "startup\n"  # "stop now" does not wait for the app's shutdown


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_fake_engine_startup_failed(fake_serve, mode):
    from fulmen._asgi import LifespanStartupFailed

    engine = FakeEngine()
    with pytest.raises(LifespanStartupFailed, match="database unreachable") as info:
        fake_serve(_lifespan_app().failing, engine, lifespan=mode)
    assert info.value.exit_code == 3 and engine.servers == []


def test_fake_engine_unsupported_lifespan(fake_serve, capfd):
    async def stop_soon(srv):
        srv.stop()

    engine = FakeEngine([stop_soon])
    fake_serve(_lifespan_app().no_lifespan, engine)
    assert engine.events[0] == ("serve", {})
    assert "ASGI 'lifespan' protocol appears unsupported." in capfd.readouterr().err
    from fulmen._asgi import LifespanStartupFailed

    with pytest.raises(LifespanStartupFailed, match="AssertionError: unsupported scope type lifespan"):
        fake_serve(_lifespan_app().no_lifespan, FakeEngine(), lifespan="on")


def test_fake_engine_lifespan_off(fake_serve, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("FULMEN_TEST_MARKER", str(marker))

    async def stop_soon(srv):
        srv.stop()

    engine = FakeEngine([stop_soon])
    fake_serve(_lifespan_app().app, engine, lifespan="off")
    assert engine.events[0] == ("serve", {}) and not marker.exists()


@pytest.mark.parametrize("loop", LOOPS)
def test_fake_engine_runs_on_the_chosen_loop(fake_serve, loop):
    seen = []

    async def which_loop(srv):
        # uvloop's Loop or a subclass of it (Fulmen adds an instance dict before Python 3.12)
        mro = type(asyncio.get_running_loop()).__mro__
        seen.append("uvloop" if any(c.__module__.startswith("uvloop") for c in mro) else "asyncio")
        srv.stop()

    fake_serve(_lifespan_app().no_lifespan, FakeEngine([which_loop]), loop=loop)
    assert seen == [loop]


def test_lifespan_protocol_errors_are_raised_in_the_app():
    from fulmen._asgi import Lifespan

    async def main():
        errors = []

        async def bad(scope, receive, send):
            await receive()
            await send({"type": "lifespan.startup.complete"})
            for message in ({"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"},
                            {"type": "http.response.start"}):
                try:
                    await send(message)
                except RuntimeError as exc:
                    errors.append(str(exc))
            await receive()
            await send({"type": "lifespan.shutdown.complete"})

        lifespan = Lifespan(bad, "on")
        await lifespan.startup()
        await lifespan.shutdown()
        return errors

    errors = asyncio.run(main())
    assert len(errors) == 3
    assert "already answered" in errors[0] and "before lifespan.shutdown" in errors[1]
    assert "unexpected message" in errors[2]


def test_asgi2_wrapper():
    from fulmen._asgi import ASGI2App

    sys.path.insert(0, str(APPS))
    try:
        import asgi_app
    finally:
        sys.path.remove(str(APPS))
    wrapped = ASGI2App(asgi_app.App2)
    sent = asyncio.run(call(wrapped))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert asyncio.iscoroutinefunction(wrapped.__call__)
