"""Answers with the WSGI environ it got, as JSON, so tests can check what the server passed.

Values that are not str/int/bool (wsgi.input, wsgi.errors, ...) are shown as their type name;
the request body read from wsgi.input is under "body".
"""

import json


def app(environ, start_response):
    # Read to the end only if the server says the stream ends with the body (PEP 3333 leaves
    # reading past CONTENT_LENGTH undefined); otherwise read exactly CONTENT_LENGTH bytes.
    if environ.get("wsgi.input_terminated"):
        body = environ["wsgi.input"].read()
    else:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    data = {
        key: value if isinstance(value, (str, int, bool)) or value is None else type(value).__name__
        for key, value in environ.items()
    }
    data["wsgi.version"] = list(environ.get("wsgi.version", ()))
    data["body"] = body.decode("latin-1")
    out = json.dumps(data, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]
