"""A real Starlette app for test_asgi_apps.py."""

from __future__ import annotations

import asyncio
import hashlib
import os

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from starlette.routing import Route


async def index(request: Request):
    return PlainTextResponse("starlette index")


async def item(request: Request):
    return JSONResponse({"id": request.path_params["item_id"], "q": request.query_params.get("q"),
                         "tags": request.query_params.getlist("tag")})


async def json_echo(request: Request):
    data = await request.json()
    return JSONResponse({"received": data, "doubled": [n * 2 for n in data.get("numbers", [])]}, status_code=201)


async def form(request: Request):
    async with request.form() as f:
        return JSONResponse({"fields": {k: f.getlist(k) for k in f.keys()}})


async def upload(request: Request):
    async with request.form(max_part_size=1024 * 1024) as f:
        up = f["file"]
        h, size = hashlib.sha256(), 0
        while chunk := await up.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
        return JSONResponse({"filename": up.filename, "size": size, "sha256": h.hexdigest(),
                             "content_type": up.content_type, "note": f.get("note")})


async def stream_body(request: Request):
    h, size, chunks = hashlib.sha256(), 0, 0
    async for chunk in request.stream():
        h.update(chunk)
        size += len(chunk)
        chunks += 1
    return JSONResponse({"sha256": h.hexdigest(), "size": size, "chunks": chunks})


async def stream(request: Request):
    n = int(request.query_params.get("n", "5"))

    async def gen():
        for i in range(n):
            yield f"line {i}\n"
            await asyncio.sleep(0.001)

    return StreamingResponse(gen(), media_type="text/plain")


def write_marker(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


async def background(request: Request):
    return PlainTextResponse("accepted", background=BackgroundTask(write_marker, request.query_params["path"], "ran"))


async def redirect(request: Request):
    return RedirectResponse("/items/7?q=via-redirect", status_code=302)


async def cookies(request: Request):
    resp = JSONResponse(dict(request.cookies))
    resp.set_cookie("flavour", "oatmeal")
    resp.set_cookie("count", "1")
    return resp


app = Starlette(routes=[
    Route("/", index),
    Route("/items/{item_id:int}", item),
    Route("/json", json_echo, methods=["POST"]),
    Route("/form", form, methods=["POST"]),
    Route("/upload", upload, methods=["POST"]),
    Route("/stream-body", stream_body, methods=["POST"]),
    Route("/stream", stream),
    Route("/background", background),
    Route("/redirect", redirect),
    Route("/cookies", cookies),
])
