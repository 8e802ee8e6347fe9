"""WebSocket routes of real frameworks for test_websocket.py: a Starlette app (`app`) and a
FastAPI app (`fastapi_app`), each greeting with its path and query parameters, then echoing."""

from __future__ import annotations

from fastapi import FastAPI, WebSocket as FastAPIWebSocket, WebSocketDisconnect
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket


async def starlette_echo(websocket: WebSocket):
    await websocket.accept(subprotocol="echo" if "echo" in websocket.scope["subprotocols"] else None)
    await websocket.send_json({"name": websocket.path_params["name"], "q": websocket.query_params.get("q")})
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await websocket.send_text("starlette: " + message["text"])
        else:
            await websocket.send_bytes(message["bytes"][::-1])


app = Starlette(routes=[WebSocketRoute("/ws/{name}", starlette_echo)])

fastapi_app = FastAPI()


@fastapi_app.websocket("/ws/{name}")
async def fastapi_echo(websocket: FastAPIWebSocket, name: str, q: str | None = None):
    await websocket.accept()
    await websocket.send_json({"name": name, "q": q})
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text("fastapi: " + text)
    except WebSocketDisconnect:
        pass
