"""Async views: served on the event loop by Django's ASGI handler (the sync ones run in threads)."""

import asyncio
import json

from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt


async def index(request):
    task = asyncio.current_task()
    return JsonResponse({"async": True, "has_task": task is not None})


async def item(request, item_id):
    return JsonResponse({"id": item_id, "q": request.GET.get("q"), "tags": request.GET.getlist("tag")})


@csrf_exempt
async def json_echo(request):
    data = json.loads(request.body)
    return JsonResponse({"received": data, "doubled": [n * 2 for n in data.get("numbers", [])]}, status=201)


async def stream(request):
    async def gen():
        for i in range(5):
            yield f"line {i}\n".encode()
            await asyncio.sleep(0.001)

    return StreamingHttpResponse(gen(), content_type="text/plain")


async def sleep(request):
    await asyncio.sleep(float(request.GET.get("s", "0.5")))
    return JsonResponse({"slept": True})
