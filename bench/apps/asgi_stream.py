"""Benchmark app: a streaming response, 16 chunks of 1 KiB sent with more_body, no Content-Length
(so HTTP/1.1 servers answer with Transfer-Encoding: chunked), then an empty final body message.

Exercises send() on the streaming path: one send() per chunk, each of which a server may write out
at once (with backpressure) or coalesce.
"""

from asgi_hello import lifespan

CHUNKS = 16
CHUNK = b"x" * 1024
START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream")]}
PART = {"type": "http.response.body", "body": CHUNK, "more_body": True}
END = {"type": "http.response.body", "body": b"", "more_body": False}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    await send(START)
    for _ in range(CHUNKS):
        await send(PART)
    await send(END)
