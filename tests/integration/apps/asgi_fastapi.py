"""A real FastAPI app for test_asgi_apps.py: JSON with validation, path/query params, forms and
file uploads (python-multipart), StreamingResponse, background tasks and dependency injection."""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI, File, Form, Header, HTTPException, Query, Request, UploadFile
from fastapi.responses import PlainTextResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel

app = FastAPI()
CLEANUPS: list[str] = []


class Order(BaseModel):
    name: str
    quantity: int
    tags: list[str] = []


@app.get("/", response_class=PlainTextResponse)
async def index():
    return "fastapi index"


@app.get("/items/{item_id}")
async def item(item_id: int, q: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 10,
               tag: Annotated[list[str], Query()] = []):
    return {"id": item_id, "q": q, "limit": limit, "tags": tag}


@app.get("/sync-items/{item_id}")
def sync_item(item_id: int):  # a plain def endpoint: FastAPI runs it in a worker thread
    return {"id": item_id, "sync": True}


@app.post("/orders", status_code=201)
async def create_order(order: Order):
    return {"order": order.model_dump(), "total_tags": len(order.tags)}


@app.post("/form")
async def form(name: Annotated[str, Form()], tags: Annotated[list[str], Form()] = []):
    return {"name": name, "tags": tags}


@app.post("/upload")
async def upload(file: Annotated[UploadFile, File()], note: Annotated[str, Form()] = ""):
    h, size = hashlib.sha256(), 0
    while chunk := await file.read(1 << 20):
        h.update(chunk)
        size += len(chunk)
    return {"filename": file.filename, "size": size, "sha256": h.hexdigest(), "content_type": file.content_type,
            "note": note}


@app.post("/stream-body")
async def stream_body(request: Request):
    h, size = hashlib.sha256(), 0
    async for chunk in request.stream():
        h.update(chunk)
        size += len(chunk)
    return {"sha256": h.hexdigest(), "size": size}


@app.get("/redirect")
async def redirect():
    return RedirectResponse("/items/7?q=via-redirect", status_code=302)


@app.get("/stream")
async def stream(n: int = 5):
    async def gen():
        for i in range(n):
            yield f"line {i}\n".encode()
            await asyncio.sleep(0.001)

    return StreamingResponse(gen(), media_type="text/plain")


def write_marker(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


@app.post("/background", status_code=202)
async def background(path: str, tasks: BackgroundTasks):
    tasks.add_task(write_marker, path, "first")
    tasks.add_task(write_marker, path + ".second", "second")
    return {"queued": 2}


# Dependency injection: a chain of dependencies, one with yield (cleanup after the response).


async def get_token(x_token: Annotated[str | None, Header()] = None) -> str:
    if x_token != "secret":
        raise HTTPException(status_code=401, detail="bad token")
    return x_token


async def get_session(request_id: str = "none"):
    session = {"id": request_id, "open": True}
    try:
        yield session
    finally:
        session["open"] = False
        CLEANUPS.append(request_id)


class Pagination:
    def __init__(self, page: int = 1, size: int = 20):
        self.page, self.size = page, size


@app.get("/di")
async def di(token: Annotated[str, Depends(get_token)], session: Annotated[dict, Depends(get_session)],
             pages: Annotated[Pagination, Depends()]):
    return {"token": token, "session": dict(session), "page": pages.page, "size": pages.size}


@app.get("/di/cleanups")
async def di_cleanups():
    return {"cleanups": CLEANUPS}
