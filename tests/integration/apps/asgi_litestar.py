"""A real Litestar app for test_asgi_apps.py."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field
from typing import Annotated, Any

from litestar import Litestar, Request, get, post
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Response, Stream


@dataclass
class Order:
    name: str
    quantity: int
    tags: list[str] = field(default_factory=list)


@get("/", media_type="text/plain")
async def index() -> str:
    return "litestar index"


@get("/items/{item_id:int}")
async def item(item_id: int, q: str | None = None, tag: list[str] | None = None) -> dict[str, Any]:
    return {"id": item_id, "q": q, "tags": tag or []}


@post("/orders")
async def create_order(data: Order) -> dict[str, Any]:
    return {"order": {"name": data.name, "quantity": data.quantity, "tags": data.tags}, "total_tags": len(data.tags)}


@post("/form")
async def form(data: Annotated[dict[str, Any], Body(media_type=RequestEncodingType.URL_ENCODED)]) -> dict[str, Any]:
    return {"fields": data}


@post("/upload")
async def upload(data: Annotated[dict[str, Any], Body(media_type=RequestEncodingType.MULTI_PART)]) -> dict[str, Any]:
    f: UploadFile = data["file"]
    content = await f.read()
    return {"filename": f.filename, "size": len(content), "sha256": hashlib.sha256(content).hexdigest(),
            "note": data.get("note")}


@post("/stream-body")
async def stream_body(request: Request) -> dict[str, Any]:
    h, size = hashlib.sha256(), 0
    async for chunk in request.stream():
        h.update(chunk)
        size += len(chunk)
    return {"sha256": h.hexdigest(), "size": size}


@get("/stream")
async def stream(n: int = 5) -> Stream:
    async def gen():
        for i in range(n):
            yield f"line {i}\n".encode()
            await asyncio.sleep(0.001)

    return Stream(gen(), media_type="text/plain")


def write_marker(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


@get("/background", media_type="text/plain")
async def background(path: str) -> Response[str]:
    return Response("accepted", background=BackgroundTask(write_marker, path, "ran"))


@get("/redirect", status_code=302)
async def go() -> Redirect:
    return Redirect(path="/items/7?q=via-redirect", status_code=302)


app = Litestar(route_handlers=[index, item, create_order, form, upload, stream_body, stream, background, go],
               request_max_body_size=None)
