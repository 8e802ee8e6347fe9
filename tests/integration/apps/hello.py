"""The smallest WSGI app: 200 "Hello, world!"."""


def app(environ, start_response):
    body = b"Hello, world!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class _Namespace:
    app = staticmethod(app)


# For a dotted attribute in APP: "hello:nested.app".
nested = _Namespace()


class HelloClass:
    """A class as the WSGI application (allowed by PEP 3333): must not be mistaken for ASGI 2."""

    def __init__(self, environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])

    def __iter__(self):
        yield b"Hello from a class\n"
