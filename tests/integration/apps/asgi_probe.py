"""An ASGI 3 app with one behaviour per path, for test_asgi_http.py (the ASGI twin of probe.py).

Query parameters tune a route; `state=PATH` names a file the app writes so the test can see how far
it got (written whole with os.replace, so a reader never sees half a file).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import os
import threading
import time
from urllib.parse import parse_qs

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
MAIN_THREAD = threading.get_ident()


def write_state(path: str | None, text: str) -> None:
    if path:
        tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)


async def read_body(receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise OSError("client disconnected")
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def respond(send, status: int = 200, body: bytes = b"", headers=(), length: bool = True,
                  content_type: bytes = b"text/plain") -> None:
    hs = [(b"content-type", content_type), *headers]
    if length:
        hs.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": hs})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send, value, status: int = 200) -> None:
    await respond(send, status, json.dumps(value).encode(), content_type=b"application/json")


async def wait_for_file(path: str, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# ---- routes ---------------------------------------------------------------------------------------


async def hello(scope, receive, send, q):
    await respond(send, body=b"hello asgi")


async def echo(scope, receive, send, q):
    body = await read_body(receive)
    await respond(send, body=body, headers=[(b"x-path", scope["path"].encode())])


async def messages(scope, receive, send, q):
    """Every receive() message until the body ends, described."""
    out, h = [], hashlib.sha256()
    while True:
        m = await receive()
        out.append({"type": m["type"], "len": len(m.get("body", b"")), "more_body": m.get("more_body", "absent"),
                    "body_type": type(m.get("body", b"")).__name__})
        h.update(m.get("body", b""))
        if m["type"] != "http.request" or not m.get("more_body"):
            break
    await respond_json(send, {"messages": out, "sha256": h.hexdigest()})


async def hash_body(scope, receive, send, q):
    h, length, count, largest = hashlib.sha256(), 0, 0, 0
    while True:
        m = await receive()
        assert m["type"] == "http.request", m["type"]
        chunk = m.get("body", b"")
        h.update(chunk)
        length += len(chunk)
        largest = max(largest, len(chunk))
        count += 1
        if not m.get("more_body"):
            break
    await respond_json(send, {"sha256": h.hexdigest(), "length": length, "messages": count, "largest": largest})


async def wait_disconnect(scope, receive, send, q):
    """Receives until http.disconnect, never answering; records the message types it saw."""
    state = q.get("state")
    seen = []
    write_state(state + ".started", "started")
    while True:
        m = await receive()
        seen.append(m["type"])
        if m["type"] == "http.disconnect":
            break
        if not m.get("more_body") and not os.path.exists(state + ".body-done"):
            write_state(state + ".body-done", "body complete")
    write_state(state, json.dumps(seen))


async def after_response(scope, receive, send, q):
    """Reads the body, answers, then calls receive() once more and records what it returned."""
    await read_body(receive)
    await respond(send, body=b"done")
    try:
        m = await asyncio.wait_for(receive(), 10)
        what = m["type"]
    except asyncio.TimeoutError:
        what = "timeout"
    write_state(q.get("state"), what)


async def respond_then_read(scope, receive, send, q):
    """Answers without reading the body first, then receive(): the body may or may not be there."""
    await respond(send, body=b"answered first")
    try:
        m = await asyncio.wait_for(receive(), 10)
        what = m["type"]
    except asyncio.TimeoutError:
        what = "timeout"
    write_state(q.get("state"), what)


async def stream(scope, receive, send, q):
    n = int(q.get("n", "3"))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for i in range(n):
        await send({"type": "http.response.body", "body": b"part%d;" % i, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def stream_gated(scope, receive, send, q):
    """Sends a first part, then waits for the client to create the file `gate` before the rest."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"first;", "more_body": True})
    ok = await wait_for_file(q["gate"])
    await send({"type": "http.response.body", "body": b"second" if ok else b"gate timeout"})


async def cl_parts(scope, receive, send, q):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
    for part in (b"abc", b"defg"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b"hij"})


async def empty_body(scope, receive, send, q):
    await send({"type": "http.response.start", "status": int(q.get("status", "200")), "headers": []})
    await send({"type": "http.response.body"})


async def big(scope, receive, send, q):
    mib, part = int(q.get("mib", "10")), b"z" * 65536
    n = mib * 16
    headers = [(b"content-length", str(mib * 1024 * 1024).encode())] if q.get("cl") else []
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for i in range(n):
        await send({"type": "http.response.body", "body": part, "more_body": i + 1 < n})
        write_state(q.get("state"), str(i + 1))


async def endless(scope, receive, send, q):
    """Streams until it learns the client is gone: from http.disconnect or from send() raising."""
    await read_body(receive)
    disconnected = asyncio.ensure_future(receive())
    await send({"type": "http.response.start", "status": 200, "headers": []})
    part, sent, reason = b"e" * 65536, 0, None
    deadline = time.monotonic() + 60
    while reason is None and time.monotonic() < deadline:
        if disconnected.done():
            reason = disconnected.result()["type"]
            break
        try:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        except OSError as e:
            reason = f"OSError:{type(e).__name__}"
        sent += 1
        await asyncio.sleep(0)
    if not disconnected.done():
        disconnected.cancel()
    write_state(q.get("state"), json.dumps({"reason": reason, "sent": sent}))


async def head(scope, receive, send, q):
    # The body is sent for HEAD too, as frameworks do: the server must drop it.
    body = b"hello world"
    headers = [(b"content-type", b"text/plain"), (b"x-method", scope["method"].encode())]
    if not q.get("nolength"):
        headers.append((b"content-length", b"11"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def expect(scope, receive, send, q):
    if q.get("read"):
        body = await read_body(receive)
        await respond(send, body=b"got " + body)
    else:
        await respond(send, 403, b"did not read")


async def raise_before(scope, receive, send, q):
    raise RuntimeError("asgi probe: raised before start")


async def raise_after(scope, receive, send, q):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"first chunk", "more_body": True})
    raise RuntimeError("asgi probe: raised after the first chunk")


async def raise_after_cl(scope, receive, send, q):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
    await send({"type": "http.response.body", "body": b"first chunk", "more_body": True})
    raise RuntimeError("asgi probe: raised after the first chunk")


async def no_response(scope, receive, send, q):
    return None


async def return_after_start(scope, receive, send, q):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})


async def return_mid_body(scope, receive, send, q):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
BODY = {"type": "http.response.body", "body": b"ok"}

# Each case is a list of messages sent in order; the one expected to fail is the last.
MISUSE = {
    "duplicate-start": [START, START],
    "body-before-start": [BODY],
    "after-final-body": [START, BODY, BODY],
    "start-after-final-body": [START, BODY, START],
    "unknown-type-before-start": [{"type": "http.response.bogus"}],
    "unknown-type-after-start": [START, {"type": "http.response.bogus", "body": b"ok"}],
    "status-str": [{"type": "http.response.start", "status": "200", "headers": []}],
    "header-name-str": [{"type": "http.response.start", "status": 200, "headers": [("x-str", b"v")]}],
    "header-value-str": [{"type": "http.response.start", "status": 200, "headers": [(b"x-str", "v")]}],
    "header-value-int": [{"type": "http.response.start", "status": 200, "headers": [(b"x-int", 5)]}],
    "body-str": [{"type": "http.response.start", "status": 200, "headers": []},
                 {"type": "http.response.body", "body": "text"}],
    "crlf-value": [{"type": "http.response.start", "status": 200,
                    "headers": [(b"x-ok", b"1"), (b"x-evil", b"a\r\nx-injected: yes"), (b"content-length", b"2")]}],
    "lf-value": [{"type": "http.response.start", "status": 200,
                  "headers": [(b"x-evil", b"a\nx-injected: yes"), (b"content-length", b"2")]}],
    "cr-value": [{"type": "http.response.start", "status": 200,
                  "headers": [(b"x-evil", b"a\rx-injected: yes"), (b"content-length", b"2")]}],
    "body-longer-than-content-length": [START, {"type": "http.response.body", "body": b"okay!"}],
    "body-shorter-than-content-length": [START, {"type": "http.response.body", "body": b"o"}],
    "crlf-name": [{"type": "http.response.start", "status": 200,
                   "headers": [(b"x-evil\r\nx-injected", b"yes"), (b"content-length", b"2")]}],
}


async def misuse(scope, receive, send, q):
    """Sends MISUSE[case]; records what the failing send() did, then lets any exception propagate
    (as a real app would)."""
    state = q.get("state")
    steps = MISUSE[q["case"]]
    for i, message in enumerate(steps):
        try:
            await send(message)
        except BaseException as e:
            write_state(state, json.dumps({"step": i, "raised": type(e).__name__, "message": str(e),
                                           "mro": [c.__name__ for c in type(e).__mro__]}))
            raise
    write_state(state, json.dumps({"step": len(steps), "raised": None}))


async def sleep(scope, receive, send, q):
    write_state(q.get("state"), "started")
    await asyncio.sleep(float(q.get("s", "1")))
    await respond(send, body=b"slept")


async def slow_then_disconnect(scope, receive, send, q):
    """Reads the body, then waits for http.disconnect (the graceful-shutdown timeout case)."""
    state = q.get("state")
    await read_body(receive)
    write_state(state + ".started", "started")
    try:
        m = await receive()
        write_state(state, m["type"])
    except asyncio.CancelledError:
        write_state(state, "cancelled")
        raise


async def ctx(scope, receive, send, q):
    entry = REQUEST_ID.get()
    rid = q.get("id", "?")
    REQUEST_ID.set(rid)
    await asyncio.sleep(float(q.get("s", "0.05")))
    after_sleep = REQUEST_ID.get()

    async def child():
        await asyncio.sleep(0)
        seen = REQUEST_ID.get()
        REQUEST_ID.set("changed by child")  # the child runs in a copy: no effect on us
        return seen

    in_child = await asyncio.create_task(child())
    in_thread = await asyncio.to_thread(REQUEST_ID.get)
    await respond_json(send, {"entry": entry, "after_sleep": after_sleep, "in_child": in_child,
                              "in_to_thread": in_thread, "after_child": REQUEST_ID.get()})


async def task_info(scope, receive, send, q):
    import sniffio
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    registry = getattr(asyncio.tasks, "_all_tasks", None)
    in_all_first = task in asyncio.all_tasks()
    # Looked at in the first step, which the server may run eagerly: its stand-ins for
    # loop.call_soon and the registry's add() must be gone by then.
    call_soon_clean = "call_soon" not in getattr(loop, "__dict__", {})
    add_clean = "add" not in getattr(registry, "__dict__", {})
    await asyncio.sleep(0)
    await respond_json(send, {
        "name": task.get_name() if task is not None else None,
        "in_all_tasks_first_step": in_all_first,
        "add_not_shadowed": add_clean and "add" not in getattr(registry, "__dict__", {}),
        "has_task": task is not None,
        "same_task_after_await": asyncio.current_task() is task,
        "in_all_tasks": task in asyncio.all_tasks(),
        "task_loop_is_running_loop": task is not None and task.get_loop() is loop,
        "loop_thread_is_main": threading.get_ident() == MAIN_THREAD,
        "sniffio": sniffio.current_async_library(),
        "loop_type": type(loop).__module__ + "." + type(loop).__name__,
        "cancelling": task.cancelling() if task is not None and hasattr(task, "cancelling") else None,
        "call_soon_not_shadowed": call_soon_clean and "call_soon" not in getattr(loop, "__dict__", {}),
    })


async def interrupt(scope, receive, send, q):
    # KeyboardInterrupt / SystemExit from the app: raised in the task's first step (which the
    # server may run eagerly, inside its own step) or in a later one (run by the loop).
    if q.get("later") == "1":
        await asyncio.sleep(0.01)
    if q.get("exc") == "exit":
        raise SystemExit(4)
    raise KeyboardInterrupt


CALL_SOON_PATCH = {"fn": None, "calls": 0}


async def patch_call_soon(scope, receive, send, q):
    # What a tracing library might do: wrap the loop's call_soon on the instance. The server must
    # leave such a patch alone (and go through it).
    loop = asyncio.get_running_loop()
    if not hasattr(loop, "__dict__"):
        await respond_json(send, {"patched": False})
        return
    real = loop.call_soon

    def counting(*args, **kwargs):
        CALL_SOON_PATCH["calls"] += 1
        return real(*args, **kwargs)

    CALL_SOON_PATCH.update(fn=counting, calls=0)
    loop.call_soon = counting
    await asyncio.sleep(0)  # the task's next step is scheduled through the patch
    await respond_json(send, {"patched": True, "calls": CALL_SOON_PATCH["calls"]})


async def unpatch_call_soon(scope, receive, send, q):
    loop = asyncio.get_running_loop()
    still = vars(loop).get("call_soon") is CALL_SOON_PATCH["fn"]
    if still:
        del loop.call_soon
    await respond_json(send, {"still_patched": still, "calls": CALL_SOON_PATCH["calls"]})


REGISTERED = {}


async def registered(scope, receive, send, q):
    # Whether this request's task is in asyncio's registry (the WeakSet behind all_tasks()) just
    # after its first step: a callback scheduled now runs once the step is over. ?wait=1 waits
    # once first, so the step that ends is a later one.
    task = asyncio.current_task()
    if q.get("wait") == "1":
        await asyncio.sleep(0)
    registry = getattr(asyncio.tasks, "_all_tasks", None)

    def look(key=q.get("key")):
        REGISTERED[key] = {"done": task.done(), "in_registry": registry is not None and task in registry,
                           "in_all_tasks": task in asyncio.all_tasks(task.get_loop()) or task.done()}

    asyncio.get_running_loop().call_soon(look)
    await respond_json(send, {"ok": True})


async def registered_result(scope, receive, send, q):
    await respond_json(send, REGISTERED.get(q.get("key"), {}))


ADD_PATCH = {"fn": None, "calls": 0}


async def patch_all_tasks_add(scope, receive, send, q):
    # The same for the registry of tasks (asyncio.all_tasks()): a patched add() is used as it is.
    registry = getattr(asyncio.tasks, "_all_tasks", None)
    if not hasattr(registry, "__dict__"):
        await respond_json(send, {"patched": False})
        return
    real = registry.add

    def counting(task):
        ADD_PATCH["calls"] += 1
        return real(task)

    ADD_PATCH.update(fn=counting, calls=0)
    registry.add = counting
    await respond_json(send, {"patched": True})


async def unpatch_all_tasks_add(scope, receive, send, q):
    registry = asyncio.tasks._all_tasks
    still = vars(registry).get("add") is ADD_PATCH["fn"]
    if still:
        del registry.add
    await respond_json(send, {"still_patched": still, "calls": ADD_PATCH["calls"]})


async def anyio_route(scope, receive, send, q):
    import anyio
    order = []

    async def worker(i):
        await anyio.sleep(0.02 * (3 - i))
        order.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(worker, i)
    with anyio.move_on_after(0.05) as scope_:
        await anyio.sleep(10)
    thread_ident = await anyio.to_thread.run_sync(threading.get_ident)
    try:
        with anyio.fail_after(0.05):
            await anyio.sleep(10)
        timed_out = False
    except TimeoutError:
        timed_out = True
    send_stream, receive_stream = anyio.create_memory_object_stream(1)
    async with anyio.create_task_group() as tg:
        async def producer():
            async with send_stream:
                for i in range(3):
                    await send_stream.send(i)
        tg.start_soon(producer)
        async with receive_stream:
            streamed = [i async for i in receive_stream]
    await respond_json(send, {"order": order, "cancelled": scope_.cancelled_caught,
                              "to_thread_other_thread": thread_ident != threading.get_ident(),
                              "fail_after": timed_out, "streamed": streamed})


def _blocking(seconds: float) -> int:
    time.sleep(seconds)
    return threading.get_ident()


async def executor(scope, receive, send, q):
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    idents = await asyncio.gather(*(loop.run_in_executor(None, _blocking, 0.2) for _ in range(3)))
    elapsed = time.monotonic() - start
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        digest = await loop.run_in_executor(pool, lambda: hashlib.sha256(b"x" * 1000).hexdigest())
    await respond_json(send, {"off_loop": all(i != threading.get_ident() for i in idents),
                              "parallel": elapsed < 0.55, "elapsed": elapsed, "digest": digest})


async def tcp(scope, receive, send, q):
    """Opens its own connection to the test's TCP echo server and relays the request body."""
    body = await read_body(receive)
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", int(q["port"])), 10)
    writer.write(body + b"\n")
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    await writer.wait_closed()
    await respond(send, body=b"echoed:" + line.rstrip(b"\n"))


ROUTES = {
    "/hello": hello, "/echo": echo, "/messages": messages, "/hash-body": hash_body,
    "/wait-disconnect": wait_disconnect, "/after-response": after_response,
    "/respond-then-read": respond_then_read, "/stream": stream, "/stream-gated": stream_gated,
    "/cl-parts": cl_parts, "/empty-body": empty_body, "/big": big, "/endless": endless, "/head": head,
    "/expect": expect, "/raise-before": raise_before, "/raise-after": raise_after,
    "/raise-after-cl": raise_after_cl, "/no-response": no_response,
    "/return-after-start": return_after_start, "/return-mid-body": return_mid_body, "/misuse": misuse,
    "/sleep": sleep, "/slow-then-disconnect": slow_then_disconnect, "/ctx": ctx, "/task": task_info,
    "/anyio": anyio_route, "/executor": executor, "/tcp": tcp, "/patch-call-soon": patch_call_soon,
    "/unpatch-call-soon": unpatch_call_soon,
    "/registered": registered, "/registered-result": registered_result,
    "/patch-all-tasks-add": patch_all_tasks_add, "/unpatch-all-tasks-add": unpatch_all_tasks_add, "/interrupt": interrupt,
}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    q = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}
    route = ROUTES.get(scope["path"])
    if route is None:
        await respond(send, 404, b"no route " + scope["path"].encode())
        return
    await route(scope, receive, send, q)
