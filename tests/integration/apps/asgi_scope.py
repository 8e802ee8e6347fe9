"""An ASGI app that answers every request with its scope as JSON (test_asgi_http.py).

bytes are sent as {"bytes": latin-1 text} and tuples as {"tuple": [...]}, so the test sees the exact
types the server used. It supports lifespan and puts {"started": True, "shared": []} in the state;
each request then sets state["leak"] (which must not reach the next request: the scope gets a
copy) and appends to state["shared"] (which is the same list in every copy: the copy is shallow).
"""

from __future__ import annotations

import json


def encode(value):
    if isinstance(value, bytes):
        return {"bytes": value.decode("latin-1")}
    if isinstance(value, tuple):
        return {"tuple": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return {"repr": repr(value), "type": type(value).__name__}


async def lifespan(scope, receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if "state" in scope:
                scope["state"]["started"] = True
                scope["state"]["shared"] = []
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(scope, receive, send)
    assert scope["type"] == "http", scope["type"]
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    out = {k: encode(v) for k, v in scope.items() if k != "state"}
    out["has_state"] = "state" in scope
    if "state" in scope:
        state = scope["state"]
        out["state"] = {"keys": sorted(state), "shared": list(state.get("shared", [])),
                        "started": state.get("started"), "leak": state.get("leak")}
        state["leak"] = scope["path"]
        if isinstance(state.get("shared"), list):
            state["shared"].append(scope["path"])
    out["body"] = body.decode("latin-1")
    data = json.dumps(out).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
