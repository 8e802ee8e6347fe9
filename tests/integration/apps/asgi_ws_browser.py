"""A Starlette app that a real browser drives over WebSocket, for test_websocket_browser.py.

GET /        an HTML page whose script opens ws://HOST/ws (offering two subprotocols, of which the
             server accepts only the second), sends text (ASCII, non-ASCII, empty), a binary
             ArrayBuffer and a ~100 KB text, checks every echo, closes with 1000, and POSTs what
             it saw to /result. Its script never throws past run(): any failure is reported too,
             so the test fails with the browser's own account rather than a bare time-out.
/ws          echoes every message with its own type (text as text, bytes as bytes).
POST /result stores the browser's report; GET /result returns it with what the server saw on /ws
             (404 until the browser has posted).

The payloads are spelled out again in the test, on purpose: the test checks the echoes against
its own copy rather than against whatever this page happened to send.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

SUBPROTOCOL = "echo.v1"  # the one the server accepts; the page offers "unknown.v0" first

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>fulmen websocket echo</title></head>
<body><pre id="status">running</pre>
<script>
"use strict";
const SUBPROTOCOLS = ["unknown.v0", "echo.v1"];
// The same payloads as in test_websocket_browser.py (there as Python).
const BINARY = new Uint8Array(1024).map((_, i) => i % 256).buffer;
const BIG = Array.from({length: 17100}, (_, i) => String(i).padStart(5, "0") + ",").join("");
const MESSAGES = ["hello", "h\\u00e9llo w\\u00f6rld \\u2014 \\u4f60\\u597d \\ud83c\\udf89", "", BINARY, BIG];

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), b => b.toString(16).padStart(2, "0")).join("");
}

function describe(data) {
  return typeof data === "string" ? {type: "text", text: data}
       : data instanceof ArrayBuffer ? {type: "binary", hex: hex(data)}
       : {type: Object.prototype.toString.call(data)};  // e.g. a Blob if binaryType were ignored
}

function same(sent, got) {
  return typeof sent === "string" ? got === sent
       : got instanceof ArrayBuffer && hex(got) === hex(sent);
}

// Messages in arrival order; next() waits for one, and fails instead of hanging once the
// connection is closed.
function inbox(ws) {
  const queue = [], waiting = [];
  let closed = null;
  ws.onmessage = ev => waiting.length ? waiting.shift().resolve(ev.data) : queue.push(ev.data);
  ws.addEventListener("close", ev => {
    closed = ev;
    for (const w of waiting.splice(0)) w.reject(new Error(`closed (${ev.code}) while waiting for an echo`));
  });
  return () => queue.length ? Promise.resolve(queue.shift())
       : closed ? Promise.reject(new Error(`closed (${closed.code}) while waiting for an echo`))
       : new Promise((resolve, reject) => waiting.push({resolve, reject}));
}

async function run(report) {
  const ws = new WebSocket("ws://" + location.host + "/ws", SUBPROTOCOLS);
  ws.binaryType = "arraybuffer";
  const next = inbox(ws);
  const closed = new Promise(resolve => ws.addEventListener("close", ev =>
    resolve({code: ev.code, reason: ev.reason, wasClean: ev.wasClean})));
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error("the WebSocket failed to open"));
  });
  ws.onerror = () => { report.errors.push("error event after open"); };
  // What the handshake negotiated, as the browser sees it.
  report.protocol = ws.protocol;
  report.extensions = ws.extensions;
  // All sent before any echo is read: the server must keep them apart and in order.
  for (const m of MESSAGES) ws.send(m);
  for (const m of MESSAGES) {
    const got = await next();
    report.echoes.push({...describe(got), ok: same(m, got)});
  }
  ws.close(1000, "done");
  report.close = await closed;
}

(async () => {
  const report = {protocol: null, extensions: null, echoes: [], close: null, errors: []};
  try {
    await run(report);
  } catch (e) {
    report.errors.push(String(e && e.stack || e));
  }
  report.ok = report.errors.length === 0 && report.echoes.length === MESSAGES.length
              && report.echoes.every(e => e.ok);
  document.getElementById("status").textContent = report.ok ? "ok" : "failed";
  await fetch("/result", {method: "POST", headers: {"content-type": "application/json"},
                          body: JSON.stringify(report)});
})();
</script></body></html>
"""

# One browser per server process, so module-level state is enough.
browser_report: dict | None = None
server_view: dict = {"connections": 0, "offered_subprotocols": None, "offered_extensions": None,
                     "received": [], "disconnect_code": None}


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE)


async def echo(websocket: WebSocket) -> None:
    server_view["connections"] += 1
    offered = websocket.scope.get("subprotocols") or []
    server_view["offered_subprotocols"] = list(offered)
    server_view["offered_extensions"] = websocket.headers.get("sec-websocket-extensions")
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            server_view["disconnect_code"] = message.get("code")
            return
        if message.get("text") is not None:
            server_view["received"].append({"type": "text", "length": len(message["text"])})
            await websocket.send_text(message["text"])
        else:
            server_view["received"].append({"type": "binary", "length": len(message["bytes"])})
            await websocket.send_bytes(message["bytes"])


async def result(request: Request) -> Response:
    global browser_report
    if request.method == "POST":
        browser_report = await request.json()
        return Response(status_code=204)
    if browser_report is None:
        return JSONResponse({"server": server_view}, status_code=404)
    return JSONResponse({"browser": browser_report, "server": server_view})


app = Starlette(routes=[
    Route("/", page),
    WebSocketRoute("/ws", echo),
    Route("/result", result, methods=["GET", "POST"]),
])
