"""Benchmark app: the smallest useful WSGI response.

Every server in bench/run.py serves this same callable, so the numbers compare the servers' HTTP and
WSGI plumbing, not the application.
"""

BODY = b"Hello, World!"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]


application = app  # uWSGI's default callable name
