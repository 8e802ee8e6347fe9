"""A plain ASGI app for test_websocket.py: one WebSocket behaviour per path, plus HTTP routes.

What the app saw is kept in RESULTS and read back with GET /results?key=K on the same process
(the side channel: a test cannot see inside the server otherwise). GET /release?key=K sets a flag
a WebSocket route can wait on (to hold the app back from receive() until the test says so).
Any other HTTP request is answered with {"type": "http", ...} (what --ws off must produce).

Lifespan puts {"started": True} in the state (the websocket scope must get a copy).
Paths are matched after the root path (Uvicorn prefixes path with --root-path, see route()).
"""

from __future__ import annotations

import asyncio
import json
import struct
from urllib.parse import parse_qs

from asgi_scope import encode

RESULTS: dict[str, object] = {}
FLAGS: dict[str, asyncio.Event] = {}


def flag(key: str) -> asyncio.Event:
    return FLAGS.setdefault(key, asyncio.Event())


def query(scope) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}


def route(scope) -> str:
    # Uvicorn prepends --root-path to the path it received (so /mount/x arrives as /mount/mount/x);
    # a server that keeps the path as sent gives /mount/x. Both route as /x.
    path, root = scope["path"], scope.get("root_path", "")
    while root and path.startswith(root + "/"):
        path = path[len(root):]
    return path


def error_info(exc: BaseException) -> dict:
    return {"error": type(exc).__name__, "oserror": isinstance(exc, OSError)}


async def lifespan(scope, receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if "state" in scope:
                scope["state"]["started"] = True
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def http(scope, receive, send):
    q, path = query(scope), route(scope)
    while (await receive()).get("more_body"):
        pass
    if path == "/results":
        body = {"result": RESULTS.get(q["key"])}
    elif path == "/release":
        flag(q["key"]).set()
        body = {"released": q["key"]}
    else:
        body = {"type": scope["type"], "path": scope["path"],
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]}
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def accept(send, q: dict[str, str]):
    message = {"type": "websocket.accept"}
    if "subprotocol" in q:
        message["subprotocol"] = q["subprotocol"]
    if "header" in q:  # header=name:value goes into the 101 response
        name, _, value = q["header"].partition(":")
        message["headers"] = [(name.encode(), value.encode())]
    await send(message)


async def websocket(scope, receive, send):
    q, path = query(scope), route(scope)
    key = q.get("key")
    first = await receive()
    if first["type"] != "websocket.connect":
        RESULTS[key or "first"] = first
        raise RuntimeError(f"asgi_ws: first message was {first['type']}")

    if path.startswith("/scope"):
        await accept(send, q)
        out = {k: encode(v) for k, v in scope.items()}
        out["first_message"] = first
        await send({"type": "websocket.send", "text": json.dumps(out)})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    elif path == "/echo":
        await accept(send, q)
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                if key:
                    RESULTS[key] = message
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})

    elif path == "/close":
        await accept(send, q)
        await send({"type": "websocket.close", "code": int(q["code"]), "reason": q.get("reason", "")})

    elif path == "/count":
        # Counts the text messages "0", "1", ... until the disconnect: were all delivered, in order?
        await accept(send, q)
        count, in_order = 0, True
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                RESULTS[key] = {"count": count, "in_order": in_order, "disconnect": message}
                return
            in_order = in_order and message.get("text") == str(count)
            count += 1

    elif path == "/reject":
        await send({"type": "websocket.close"})

    elif path == "/deny":
        # A denial response (the websocket.http.response extension), its body in two parts.
        await send({"type": "websocket.http.response.start", "status": 418,
                    "headers": [(b"content-type", b"text/plain"), (b"x-denial", b"teapot")]})
        await send({"type": "websocket.http.response.body", "body": b"short and ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"stout"})

    elif path == "/return-before-accept":
        return

    elif path == "/raise-before-accept":
        raise RuntimeError("asgi_ws: raised before accept")

    elif path == "/raise-after-accept":
        await accept(send, q)
        raise RuntimeError("asgi_ws: raised after accept")

    elif path == "/return-after-accept":
        await accept(send, q)
        return

    elif path == "/send-after-close":
        await accept(send, q)
        await send({"type": "websocket.close", "code": 4000})
        try:
            await send({"type": "websocket.send", "text": "too late"})
            RESULTS[key] = {"error": None}
        except Exception as exc:
            RESULTS[key] = error_info(exc)

    elif path == "/send-after-disconnect":
        await accept(send, q)
        message = await receive()
        try:
            await send({"type": "websocket.send", "text": "too late"})
            RESULTS[key] = {"disconnect": message, "error": None}
        except Exception as exc:
            RESULTS[key] = {"disconnect": message, **error_info(exc)}

    elif path == "/flood":
        # Sends `count` binary messages of `size` bytes, each starting with its number; RESULTS
        # says how many send() calls have returned (a client that does not read must stall it).
        await accept(send, q)
        size, count = int(q["size"]), int(q["count"])
        filler = b"f" * (size - 8)
        state = RESULTS[key] = {"sent": 0, "done": False}
        for i in range(count):
            await send({"type": "websocket.send", "bytes": struct.pack("!Q", i) + filler})
            state["sent"] = i + 1
        state["done"] = True
        await send({"type": "websocket.close", "code": 1000})

    elif path == "/slow-receive":
        # Does not call receive() until GET /release?key=K, then checks every binary message
        # (numbered 0, 1, ...) arrived whole and in order.
        await accept(send, q)
        RESULTS[key] = {"waiting": True}
        await flag(key).wait()
        count, in_order, total = 0, True, 0
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                RESULTS[key] = {"count": count, "in_order": in_order, "bytes": total, "disconnect": message}
                return
            data = message["bytes"]
            in_order = in_order and struct.unpack("!Q", data[:8])[0] == count
            count += 1
            total += len(data)

    elif path == "/shutdown":
        # After shutdown the side channel is gone: report on stdout, which the test reads.
        await accept(send, q)
        print("asgi_ws: accepted", flush=True)
        message = await receive()
        print(f"asgi_ws: {message['type']} {message.get('code')}", flush=True)

    elif path == "/deny-after-disconnect":
        # Before accepting, receive() returns only once the client is gone; the app then denies
        # the handshake anyway (websocket.close): there is nobody to answer, but the server must
        # still close the connection.
        state = RESULTS[key] = {"message": None, "closed": False}
        state["message"] = await receive()
        try:
            await send({"type": "websocket.close"})
            state["closed"] = True
        except Exception as exc:
            state.update(error_info(exc))

    elif path == "/two-sends":
        # Two sends of `size` bytes at once (two tasks): when the client reads slowly both wait
        # for the socket to drain, and both must complete. RESULTS lists the ones that returned.
        await accept(send, q)
        size = int(q["size"])
        state = RESULTS[key] = {"started": True, "done": []}

        async def one(i: int) -> None:
            await send({"type": "websocket.send", "bytes": struct.pack("!Q", i) + b"t" * (size - 8)})
            state["done"].append(i)

        await asyncio.gather(one(0), one(1))
        await send({"type": "websocket.close", "code": 1000})

    elif path == "/receive-steps":
        # A slow receiver: after GET /release?key=K it receives `first` messages `delay` seconds
        # apart (its own pace), reports {"paused": True} and waits for GET /release?key=K/rest
        # before receiving the rest at full speed. Binary messages are numbered (0, 1, ...).
        await accept(send, q)
        first, delay = int(q["first"]), float(q["delay"])
        state = RESULTS[key] = {"count": 0, "in_order": True, "bytes": 0, "paused": False}
        await flag(key).wait()
        while True:
            if state["count"] == first and not state["paused"]:
                state["paused"] = True
                await flag(key + "/rest").wait()
            message = await receive()
            if message["type"] == "websocket.disconnect":
                state["disconnect"] = message
                return
            data = message["bytes"]
            state["in_order"] = state["in_order"] and struct.unpack("!Q", data[:8])[0] == state["count"]
            state["count"] += 1
            state["bytes"] += len(data)
            if state["count"] < first:
                await asyncio.sleep(delay)

    elif path == "/send-both":
        # websocket.send with both 'bytes' and 'text': the ASGI spec says exactly one is set.
        await accept(send, q)
        try:
            await send({"type": "websocket.send", "bytes": b"b", "text": "t"})
            RESULTS[key] = {"error": None}
        except Exception as exc:
            RESULTS[key] = error_info(exc)
        await send({"type": "websocket.close", "code": 1000})

    else:
        await send({"type": "websocket.close", "code": 4404})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(scope, receive, send)
    if scope["type"] == "http":
        return await http(scope, receive, send)
    assert scope["type"] == "websocket", scope["type"]
    return await websocket(scope, receive, send)
