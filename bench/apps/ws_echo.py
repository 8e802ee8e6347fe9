"""Benchmark app: WebSocket echo (the WebSocket suite). Accepts every connection and sends each
message back as it came, text as text and bytes as bytes, until the client disconnects.

Plain ASGI 3, no framework, so the numbers compare the servers' WebSocket and ASGI plumbing. It
answers the lifespan protocol (like the other apps) and plain HTTP with a short text, so a server's
readiness and a stray GET can be told from a WebSocket failure.
"""

from asgi_hello import lifespan

ACCEPT = {"type": "websocket.accept"}
HTTP_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"15")],
}
HTTP_BODY = {"type": "http.response.body", "body": b"WebSocket echo\n"}


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "websocket":
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send(ACCEPT)
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":  # websocket.disconnect
                return
            text = message.get("text")
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
    elif kind == "http":
        await send(HTTP_START)
        await send(HTTP_BODY)
    elif kind == "lifespan":
        await lifespan(receive, send)
