"""Benchmark app: the smallest useful ASGI 3 response (the ASGI twin of wsgi_hello.py).

One http.response.start and one http.response.body with Content-Length, so the numbers compare the
servers' HTTP and ASGI plumbing, not the application. It answers the lifespan protocol too, so every
server starts it the same way (no "lifespan unsupported" path).
"""

BODY = b"Hello, World!"
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())],
}
RESPONSE = {"type": "http.response.body", "body": BODY}


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "http":
        await send(START)
        await send(RESPONSE)
    elif scope["type"] == "lifespan":
        await lifespan(receive, send)
