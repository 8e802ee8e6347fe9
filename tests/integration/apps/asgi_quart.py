"""A real Quart app for test_asgi_apps.py."""

from __future__ import annotations

import asyncio
import hashlib
import os

from quart import Quart, jsonify, redirect, request

app = Quart(__name__)
app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024


@app.get("/")
async def index():
    return "quart index"


@app.get("/items/<int:item_id>")
async def item(item_id: int):
    return jsonify({"id": item_id, "q": request.args.get("q"), "tags": request.args.getlist("tag")})


@app.post("/json")
async def json_echo():
    data = await request.get_json()
    return jsonify({"received": data, "doubled": [n * 2 for n in data.get("numbers", [])]}), 201


@app.post("/form")
async def form():
    f = await request.form
    return jsonify({"fields": {k: f.getlist(k) for k in f.keys()}})


@app.post("/upload")
async def upload():
    files = await request.files
    f = files["file"]
    data = f.read()
    note = (await request.form).get("note")
    return jsonify({"filename": f.filename, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                    "note": note})


@app.post("/stream-body")
async def stream_body():
    h, size = hashlib.sha256(), 0
    async for chunk in request.body:
        h.update(chunk)
        size += len(chunk)
    return jsonify({"sha256": h.hexdigest(), "size": size})


@app.get("/stream")
async def stream():
    n = int(request.args.get("n", "5"))

    async def gen():
        for i in range(n):
            yield f"line {i}\n".encode()
            await asyncio.sleep(0.001)

    return gen(), 200, {"Content-Type": "text/plain"}


def write_marker(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


@app.get("/background")
async def background():
    path = request.args["path"]

    async def task():
        await asyncio.sleep(0.01)
        write_marker(path, "ran")

    app.add_background_task(task)
    return "accepted"


@app.get("/redirect")
async def go():
    return redirect("/items/7?q=via-redirect")
