"""One WSGI app with an endpoint per behaviour the HTTP/1 tests look at (routed on PATH_INFO).

Endpoints that need to tell the test something the response cannot carry (how far a generator
got, whether close() ran) write it to a file named by the `state` query parameter.
"""

import hashlib
import io
import json
import os
import sys
import threading
import time
from urllib.parse import parse_qs


def _q(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()}


def _send(start_response, body, status="200 OK", ctype="text/plain", length=True, extra=()):
    headers = [("Content-Type", ctype), *extra]
    if length:
        headers.append(("Content-Length", str(len(body))))
    start_response(status, headers)
    return [body]


def _write_atomically(path, text):
    """Tests poll these files with exists() then read them: a file must never be seen half-written."""
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _mark(path, text):
    """Appends `text` (the tests' writers of one file never run concurrently)."""
    try:
        with open(path) as f:
            text = f.read() + text
    except FileNotFoundError:
        pass
    _write_atomically(path, text)


class Closing:
    """An iterable whose close() leaves a marker, so tests can see PEP 3333's close() guarantee."""

    def __init__(self, parts, state):
        self.parts = parts
        self.state = state

    def __iter__(self):
        return iter(self.parts)

    def close(self):
        _mark(self.state, "closed\n")


def echo(environ, start_response, q):
    body = environ["wsgi.input"].read()
    extra = [("X-Request-Method", environ["REQUEST_METHOD"])]
    return _send(start_response, body, extra=extra)


def chunks(environ, start_response, q):
    """No Content-Length: the server must frame it (chunked for 1.1, close for 1.0)."""
    n = int(q.get("n", 3))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return (b"part%d;" % i for i in range(n))


def declared(environ, start_response, q):
    """Content-Length says `cl`, the body has `real` bytes."""
    cl, real = int(q["cl"]), int(q["real"])
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(cl))])
    return [b"x" * (real // 2), b"y" * (real - real // 2)]


def big(environ, start_response, q):
    """`mib` MiB in 64 KiB chunks; counts the chunks produced in the state file."""
    total = int(q.get("mib", 10)) * 16
    state = q["state"]
    block = b"z" * 65536

    def gen():
        for i in range(total):
            _write_atomically(state, str(i + 1))
            yield block

    headers = [("Content-Type", "application/octet-stream")]
    if q.get("cl"):
        headers.append(("Content-Length", str(total * 65536)))
    start_response("200 OK", headers)
    return gen()


def raise_before(environ, start_response, q):
    raise RuntimeError("probe: raised before start_response")


def raise_after(environ, start_response, q):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b"first chunk"
        raise RuntimeError("probe: raised after the first chunk")

    return Closing(gen(), q["state"]) if "state" in q else gen()


def closing(environ, start_response, q):
    """Yields `n` chunks of 64 KiB (n=0: forever) from an iterable whose close() leaves a mark."""
    n = int(q.get("n", 1))
    block = b"c" * 65536

    def gen():
        i = 0
        while n == 0 or i < n:
            i += 1
            yield block

    start_response("200 OK", [("Content-Type", "text/plain")])
    return Closing(gen(), q["state"])


def write_callable(environ, start_response, q):
    headers = [("Content-Type", "text/plain")]
    if q.get("cl"):
        headers.append(("Content-Length", "9"))
    write = start_response("200 OK", headers)
    write(b"abc")
    write(b"def")
    return [b"ghi"]


def exc_info_before(environ, start_response, q):
    """start_response twice: the second, with exc_info before any body, replaces the first."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])
    try:
        raise ValueError("probe: handled error")
    except ValueError:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain"), ("X-Second", "1")],
                       sys.exc_info())
    return [b"replaced"]


def exc_info_after(environ, start_response, q):
    """exc_info after the headers went out: start_response re-raises the app's exception."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"headers are out")
    try:
        raise ValueError("probe: error after headers")
    except ValueError:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
    return [b"not reached"]


def second_start_response(environ, start_response, q):
    """start_response a second time without exc_info must raise."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        start_response("201 Created", [("Content-Type", "text/plain")])
    except AssertionError as e:
        return [b"AssertionError: " + str(e).encode()]
    return [b"no error"]


def file(environ, start_response, q):
    """wsgi.file_wrapper over the file `path`, from `offset`, with Content-Length `cl` if given."""
    f = open(q["path"], "rb")
    if q.get("offset"):
        f.seek(int(q["offset"]))
    headers = [("Content-Type", "application/octet-stream")]
    if q.get("cl"):
        headers.append(("Content-Length", q["cl"]))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](f, 32768)


def file_bytesio(environ, start_response, q):
    """wsgi.file_wrapper over something that is not a file: iterated with read(blksize)."""
    data = bytes(range(256)) * 100
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](io.BytesIO(data), 1000)


def has_file_wrapper(environ, start_response, q):
    return _send(start_response, repr(environ.get("wsgi.file_wrapper")).encode())


def input_modes(environ, start_response, q):
    """Reads the body the way `mode` says; answers with JSON: the pieces read, latin-1."""
    inp = environ["wsgi.input"]
    mode = q["mode"]
    if mode == "read":
        pieces = [inp.read()]
        pieces.append(inp.read())  # at EOF: b""
    elif mode.startswith("readn"):
        n = int(mode[5:])
        pieces = []
        while True:
            p = inp.read(n)
            if not p:
                break
            pieces.append(p)
    elif mode == "readline":
        pieces = []
        while True:
            line = inp.readline()
            if not line:
                break
            pieces.append(line)
    elif mode.startswith("readline") and mode[8:].isdigit():  # readlineN: readline with a size limit
        n = int(mode[8:])
        pieces = []
        while True:
            line = inp.readline(n)
            if not line:
                break
            pieces.append(line)
    elif mode == "readlines":
        pieces = inp.readlines()
    elif mode == "iter":
        pieces = list(inp)
    else:
        raise ValueError(mode)
    out = json.dumps([p.decode("latin-1") for p in pieces]).encode()
    return _send(start_response, out, ctype="application/json")


def hash_body(environ, start_response, q):
    """Hashes the body 64 KiB at a time: the server must stream it, not buffer it."""
    h = hashlib.sha256()
    total = 0
    inp = environ["wsgi.input"]
    while True:
        block = inp.read(65536)
        if not block:
            break
        h.update(block)
        total += len(block)
    return _send(start_response, json.dumps({"sha256": h.hexdigest(), "length": total}).encode(),
                 ctype="application/json")


def sleep(environ, start_response, q):
    if "state" in q:
        _mark(q["state"], "started\n")
    time.sleep(float(q.get("s", 0.5)))
    return _send(start_response, b"slept")


def expect(environ, start_response, q):
    """Reads the body only if read=1."""
    if q.get("read"):
        body = environ["wsgi.input"].read()
        return _send(start_response, b"got " + body)
    return _send(start_response, b"did not read", status="403 Forbidden")


def head(environ, start_response, q):
    body = b"hello world"
    headers = [("Content-Type", "text/plain"), ("X-Probe", "head")]
    if not q.get("nolength"):
        headers.append(("Content-Length", str(len(body))))
    start_response("200 OK", headers)
    return [body]


ROUTES = {name.replace("_", "-"): fn for name, fn in list(globals().items())
          if callable(fn) and getattr(fn, "__module__", None) == __name__ and not name.startswith("_")
          and name not in ("Closing", "app")}


def app(environ, start_response):
    q = _q(environ)
    route = environ["PATH_INFO"].strip("/").split("/")[0]
    fn = ROUTES.get(route)
    if fn is None:
        return _send(start_response, b"no route " + route.encode(), status="404 Not Found")
    return fn(environ, start_response, q)
