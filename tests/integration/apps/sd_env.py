"""Answers with the process's LISTEN_* variables and SERVER_NAME/SERVER_PORT, as JSON
(test_sockets.py: socket activation must not leak LISTEN_* to the app or its children)."""

import json
import os


def app(environ, start_response):
    out = json.dumps({
        "listen": {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")},
        "SERVER_NAME": environ["SERVER_NAME"],
        "SERVER_PORT": environ["SERVER_PORT"],
        "pid": os.getpid(),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]
