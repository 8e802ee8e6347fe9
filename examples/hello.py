"""The smallest WSGI app: `fulmen --app-dir examples hello:app` serves it."""


def app(environ, start_response):
    body = b"Hello, World!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
