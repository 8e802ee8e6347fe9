"""The application behind the Autobahn conformance run (tests/conformance/autobahn.py).

A plain ASGI 3 app, no framework: every WebSocket connection is accepted and each message is sent
back as it came, text as text and bytes as bytes, until the client disconnects. Autobahn's cases
judge the *server* (framing, fragmentation, UTF-8 validation, ping/pong, closing handshake), so the
app must add nothing of its own: no subprotocol, no extra messages, no close initiated by the app.
Everything the cases see beyond the echo is therefore the server's doing.

It also completes the lifespan protocol, so that a server that runs lifespan starts without a
warning, and answers a plain HTTP request with 426 (this path only speaks WebSocket).
"""


async def _websocket(scope, receive, send):
    message = await receive()
    if message["type"] != "websocket.connect":  # the ASGI spec makes this the first event
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            # Exactly one of "text"/"bytes" is set (the other absent or None): the server decided
            # the frame type, and the echo must keep it, which is what cases 1.x and 9.x check.
            text = message.get("text")
            if text is not None:
                reply = {"type": "websocket.send", "text": text}
            else:
                reply = {"type": "websocket.send", "bytes": message.get("bytes") or b""}
            try:
                await send(reply)
            except OSError:
                # The client closed while this echo was on its way (the cases close right after
                # their last message). ASGI has send() on a closed connection raise an OSError
                # subclass; the session is over, which is not an application error.
                return
        elif kind == "websocket.disconnect":
            return


async def _lifespan(scope, receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _http(scope, receive, send):
    body = b"WebSocket echo endpoint: connect with a WebSocket client.\n"
    await send({"type": "http.response.start", "status": 426,
                "headers": [(b"upgrade", b"websocket"), (b"connection", b"upgrade"),
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "websocket":
        await _websocket(scope, receive, send)
    elif kind == "lifespan":
        await _lifespan(scope, receive, send)
    elif kind == "http":
        await _http(scope, receive, send)
    else:
        raise RuntimeError(f"ws_echo: unsupported scope type {kind!r}")
