"""The smallest WSGI app: 200 "Hello, world!"."""


def app(environ, start_response):
    body = b"Hello, world!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class _Namespace:
    app = staticmethod(app)


# For a dotted attribute in APP: "hello:nested.app".
nested = _Namespace()
