"""Test apps wrapped in wsgiref.validate.validator, which checks both sides of PEP 3333.

Every WSGIWarning is turned into an error, so anything the validator dislikes about what the
server passed (or how it drives the iterable) becomes an exception: a 500 and a traceback in
the server log, which the tests look for.
"""

import io
import warnings
from wsgiref.validate import WSGIWarning, validator

warnings.simplefilter("error", WSGIWarning)


def _plain(start_response, body, status="200 OK", length=True):
    headers = [("Content-Type", "text/plain")]
    if length:
        headers.append(("Content-Length", str(len(body))))
    start_response(status, headers)
    return [body]


def _read_body(environ):
    inp = environ["wsgi.input"]
    if environ.get("CONTENT_LENGTH"):
        return inp.read(int(environ["CONTENT_LENGTH"]))
    parts = []
    while True:  # chunked: wsgi.input_terminated says reading to the end is allowed
        part = inp.read(4096)
        if not part:
            return b"".join(parts)
        parts.append(part)


def _route(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/get":
        return _plain(start_response, b"got " + environ["QUERY_STRING"].encode())
    if path == "/post":
        return _plain(start_response, b"posted " + _read_body(environ))
    if path == "/lines":
        inp = environ["wsgi.input"]
        first = inp.readline()
        second = inp.readline(3)
        rest = inp.readlines()
        return _plain(start_response, b"|".join([first, second, *rest]))
    if path == "/iterate":
        return _plain(start_response, b"|".join(list(environ["wsgi.input"])))
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"chunk %d\n" % i for i in range(10))
    if path == "/file":
        data = bytes(range(256)) * 64
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(data)))])
        return environ["wsgi.file_wrapper"](io.BytesIO(data), 1000)
    if path == "/realfile":
        f = open(environ["QUERY_STRING"], "rb")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f)
    if path == "/head":
        return _plain(start_response, b"head body")
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"returned"]
    if path == "/empty":
        start_response("204 No Content", [])
        return []
    if path == "/environ":
        keys = sorted(k for k in environ if not k.startswith("HTTP_"))
        return _plain(start_response, "\n".join(keys).encode())
    return _plain(start_response, b"not found", status="404 Not Found")


app = validator(_route)
