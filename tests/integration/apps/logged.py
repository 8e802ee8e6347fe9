"""WSGI and ASGI apps for the logging tests: a response header the access log can show
(%({x-trace}o)s), and a line through the app's own logger ("logged.app") for --log-config."""

import logging
import os
import time

log = logging.getLogger("logged.app")

# A worker that imports this while the file LOGGED_SLOW_IMPORT names exists takes 2 s to boot.
if os.path.exists(os.environ.get("LOGGED_SLOW_IMPORT", "/nonexistent")):
    time.sleep(2)


def wsgi(environ, start_response):
    log.warning("app saw %s", environ["PATH_INFO"])
    body = b"logged\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Trace", "trace-wsgi"),
                              ("Content-Length", str(len(body)))])
    return [body]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    log.warning("app saw %s", scope["path"])
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"x-trace", b"trace-asgi")]})
    await send({"type": "http.response.body", "body": b"logged\n"})
