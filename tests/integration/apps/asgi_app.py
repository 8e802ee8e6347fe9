"""The forms an ASGI app can take (ASGI 3 function, class, partial; ASGI 2 class): each must be detected and served."""

import functools


async def app(scope, receive, send):  # ASGI 3
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"asgi"})


class App2:  # ASGI 2: App2(scope), then await instance(receive, send)
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        await app(self.scope, receive, send)


class App3Instance:  # ASGI 3 as an instance with an async __call__ (like Starlette)
    async def __call__(self, scope, receive, send):
        await app(scope, receive, send)


instance = App3Instance()
partial = functools.partial(app)
