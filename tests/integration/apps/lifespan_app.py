"""ASGI apps for the lifespan tests: each answers HTTP requests with JSON about its scope.

FULMEN_TEST_MARKER, when set, is a file path: startup and shutdown append a line to it ("startup",
"shutdown") so the tests can see that (and in which order) they ran.
"""

import json
import os
import sys


def _mark(event):
    print(f"lifespan_app: {event} ran", file=sys.stderr, flush=True)
    path = os.environ.get("FULMEN_TEST_MARKER")
    if path:  # written whole and renamed into place: the tests poll for the file, then read it
        try:
            with open(path) as f:
                before = f.read()
        except FileNotFoundError:
            before = ""
        with open(path + ".tmp", "w") as f:
            f.write(before + event + "\n")
        os.replace(path + ".tmp", path)


async def _http(scope, receive, send):
    state = scope.get("state")
    body = {"type": scope["type"], "path": scope["path"], "state": state}
    if state is not None and scope["path"] == "/mutate":
        state["added_by_a_request"] = True  # must not leak into the next request's copy
        state["shared"].append("x")  # a shallow copy: nested objects are shared
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


async def app(scope, receive, send):
    """Full lifespan support: startup fills the state, shutdown writes the marker."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _mark("startup")
                scope["state"]["db"] = "connected"
                scope["state"]["asgi"] = scope["asgi"]
                scope["state"]["shared"] = []
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                _mark("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    await _http(scope, receive, send)


async def failing(scope, receive, send):
    """Startup fails the way the spec says: lifespan.startup.failed with a message."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable at db:5432"})
        return
    await _http(scope, receive, send)


async def raising(scope, receive, send):
    """Startup raises (an app with lifespan support and a bug, or one without support)."""
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("startup exploded in lifespan_app")
    await _http(scope, receive, send)


async def no_lifespan(scope, receive, send):
    """An app that knows only HTTP, like many hand-written ones."""
    assert scope["type"] == "http", f"unsupported scope type {scope['type']}"
    await _http(scope, receive, send)


async def shutdown_failing(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        _mark("shutdown")
        await send({"type": "lifespan.shutdown.failed", "message": "could not flush the queue"})
        return
    await _http(scope, receive, send)


class App2:
    """ASGI 2 (double callable) with lifespan support."""

    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        await app(self.scope, receive, send)
