"""Apps for the worker/supervisor tests (test_workers.py): WSGI `app` and ASGI `asgi_app`.

/          "ok <pid>" (the pid tells the tests which worker answered)
/sleep?s=  answers after s seconds (an in-flight request during a stop; awaited in the ASGI app)
/spin      never returns: the worker's loop stops (the --timeout test); the stack shows spin_forever
/grow?mb=  keeps mb more MiB alive in the worker (the --max-rss test)
/version   VERSION of the module `workers_version` on the app dir, imported when the worker starts
           (HUP re-imports it unless --preload)
"""

import asyncio
import importlib
import os
import time
from urllib.parse import parse_qs

_kept = []


def _version():
    try:
        return importlib.import_module("workers_version").VERSION
    except ImportError:
        return "none"


VERSION = _version()


def spin_forever():
    n = 0
    while True:
        n += 1


def _answer(path, query):
    q = parse_qs(query)
    if path == "/sleep":
        time.sleep(float(q.get("s", ["1"])[0]))
    elif path == "/spin":
        spin_forever()
    elif path == "/grow":
        _kept.append(bytearray(int(q.get("mb", ["1"])[0]) * 1024 * 1024))
    elif path == "/version":
        return VERSION.encode()
    return f"ok {os.getpid()}".encode()


def app(environ, start_response):
    body = _answer(environ["PATH_INFO"], environ.get("QUERY_STRING", ""))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/sleep":  # awaited: the loop (and its signal handlers) keeps running
        await asyncio.sleep(float(parse_qs(scope["query_string"].decode()).get("s", ["1"])[0]))
        body = f"ok {os.getpid()}".encode()
    else:
        body = _answer(scope["path"], scope["query_string"].decode())
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
