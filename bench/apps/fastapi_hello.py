"""Benchmark app: FastAPI hello world, the 13-byte text as a PlainTextResponse (Content-Length set).

What a framework adds per request (Starlette routing, request/response objects, FastAPI's
dependency and response handling) on top of the server: compare with asgi-hello.
"""

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/", response_class=PlainTextResponse)
async def hello() -> PlainTextResponse:
    return PlainTextResponse("Hello, World!")
