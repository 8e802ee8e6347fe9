"""WSGI endpoints for the robustness tests: slow handlers, a KeyboardInterrupt, odd statuses."""

import json
import time
from pathlib import Path
from urllib.parse import parse_qs


def app(environ, start_response):
    path = environ["PATH_INFO"]
    q = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    if "state" in q:
        Path(q["state"]).touch()  # tells the test the app is running (no sleeping to find out)
    if path == "/sleep":
        time.sleep(float(q.get("s", "1")))
    elif path == "/keyboard-interrupt":
        raise KeyboardInterrupt
    elif path == "/early-hints":
        start_response("103 Early Hints", [("Link", "</a.css>; rel=preload")])
        return [b""]
    elif path == "/environ":
        body = json.dumps({k: environ.get(k) for k in ("CONTENT_LENGTH", "CONTENT_TYPE")}).encode()
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    body = environ["wsgi.input"].read() or b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
