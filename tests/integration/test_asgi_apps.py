"""Real ASGI frameworks on the real server, driven by a real HTTP client (httpx): what a Starlette,
FastAPI, Django (ASGI handler), Quart or Litestar user sees. The apps are apps/asgi_starlette.py,
asgi_fastapi.py, asgi_quart.py, asgi_litestar.py and apps/djangoapp/asgi.py.

The server under test is Fulmen, or Uvicorn with FULMEN_TEST_ASGI_SERVER=uvicorn (conftest.py).
Fulmen is started without --interface, as a user would: it must tell these apps are ASGI.
"""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from conftest import start_asgi
from rawhttp import MiB, in_parallel, rss_growth, wait_until


APPS = {
    "starlette": "asgi_starlette:app",
    "fastapi": "asgi_fastapi:app",
    "quart": "asgi_quart:app",
    "litestar": "asgi_litestar:app",
    "django": "djangoapp.asgi:application",
}


@pytest.fixture(scope="module")
def upload_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("upload") / "payload.bin"
    path.write_bytes(os.urandom(2 * MiB + 7))
    return path


@pytest.fixture(scope="module")
def servers(upload_file):
    """One process per framework for the module, started on first use."""
    running = {}

    def get(name: str):
        srv = running.get(name)
        if srv is None or srv.proc.poll() is not None:
            env = {"DJANGO_TEST_FILE": str(upload_file)} if name == "django" else None
            srv = running[name] = start_asgi(APPS[name], env, interface=None, access_log=False)
        return srv

    yield get
    for srv in running.values():
        srv.kill()


def client_for(servers, name):
    return httpx.Client(base_url=servers(name).url, timeout=30)


@pytest.fixture
def starlette(servers):
    with client_for(servers, "starlette") as c:
        yield c


@pytest.fixture
def fastapi(servers):
    with client_for(servers, "fastapi") as c:
        yield c


@pytest.fixture
def django(servers):
    with client_for(servers, "django") as c:
        yield c


@pytest.fixture(params=list(APPS))
def any_app(request, servers):
    with client_for(servers, request.param) as c:
        c.framework = request.param
        yield c


@pytest.fixture(params=["starlette", "fastapi", "quart", "litestar"])
def micro(request, servers):
    """The four frameworks that share a route layout (Django is tested on its own)."""
    with client_for(servers, request.param) as c:
        c.framework = request.param
        yield c


# ---- what every framework does --------------------------------------------------------------------


def test_index(any_app):
    path = "/async" if any_app.framework == "django" else "/"
    r = any_app.get(path)
    assert r.status_code == 200
    if any_app.framework == "django":
        assert r.json() == {"async": True, "has_task": True}
    else:
        assert r.text == f"{any_app.framework} index"


def test_path_and_query_params(any_app):
    path = "/async/items/42" if any_app.framework == "django" else "/items/42"
    r = any_app.get(path, params=[("q", "zoë & co"), ("tag", "a"), ("tag", "b")])
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["id"], got["q"], got["tags"]) == (42, "zoë & co", ["a", "b"])


def test_unknown_route_is_404(any_app):
    assert any_app.get("/no/such/route").status_code == 404


def test_streaming_response(any_app):
    path = "/async/stream" if any_app.framework == "django" else "/stream"
    with any_app.stream("GET", path) as r:
        assert r.status_code == 200
        assert r.headers.get("transfer-encoding") == "chunked"
        lines = list(r.iter_lines())
    assert lines == [f"line {i}" for i in range(5)]


def test_json(micro):
    if micro.framework in ("fastapi", "litestar"):
        r = micro.post("/orders", json={"name": "tea", "quantity": 3, "tags": ["hot", "green"]})
        assert r.status_code == 201, r.text
        assert r.json() == {"order": {"name": "tea", "quantity": 3, "tags": ["hot", "green"]}, "total_tags": 2}
        bad = micro.post("/orders", json={"name": "tea", "quantity": "many"})
        assert bad.status_code in (400, 422), bad.text  # validation (FastAPI 422, Litestar 400)
    else:
        r = micro.post("/json", json={"numbers": [1, 2, 3], "text": "héllo"})
        assert r.status_code == 201
        assert r.headers["content-type"].startswith("application/json")
        assert r.json() == {"received": {"numbers": [1, 2, 3], "text": "héllo"}, "doubled": [2, 4, 6]}


def test_urlencoded_form(micro):
    r = micro.post("/form", data={"name": "Zoë & co", "tags": ["a", "b"]})
    assert r.status_code in (200, 201), r.text
    got = r.json()
    if micro.framework == "fastapi":
        assert got == {"name": "Zoë & co", "tags": ["a", "b"]}
    elif micro.framework == "litestar":
        assert got["fields"]["name"] == "Zoë & co" and got["fields"]["tags"] == ["a", "b"]
    else:
        assert got == {"fields": {"name": ["Zoë & co"], "tags": ["a", "b"]}}


def test_multipart_file_upload(micro, upload_file):
    data = upload_file.read_bytes()
    r = micro.post("/upload", files={"file": ("payload.bin", data, "application/octet-stream")},
                   data={"note": "two megabytes"})
    assert r.status_code in (200, 201), r.text
    got = r.json()
    assert (got["filename"], got["size"], got["sha256"], got["note"]) == (
        "payload.bin", len(data), hashlib.sha256(data).hexdigest(), "two megabytes")


def test_chunked_request_body_is_streamed_to_the_framework(micro):
    data = os.urandom(3 * MiB + 1)

    def gen():  # no length: httpx sends Transfer-Encoding: chunked
        for i in range(0, len(data), 100_000):
            yield data[i:i + 100_000]

    r = micro.post("/stream-body", content=gen())
    assert r.status_code in (200, 201), r.text
    got = r.json()
    assert (got["size"], got["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


def test_background_task_runs_after_the_response(micro, tmp_path):
    marker = tmp_path / "bg"
    if micro.framework == "fastapi":
        r = micro.post("/background", params={"path": str(marker)})
        assert r.status_code == 202 and r.json() == {"queued": 2}
        assert wait_until(lambda: (tmp_path / "bg.second").exists(), timeout=15)
        assert marker.read_text() == "first"
    else:
        r = micro.get("/background", params={"path": str(marker)})
        assert r.status_code == 200 and r.text == "accepted"
        assert wait_until(marker.exists, timeout=15), "the background task did not run"
        assert marker.read_text() == "ran"
    assert micro.get("/").status_code == 200  # and the server keeps serving


def test_redirect(micro):
    r = micro.get("/redirect")
    assert r.status_code in (302, 307) and r.headers["location"].endswith("/items/7?q=via-redirect")
    r = micro.get("/redirect", follow_redirects=True)
    assert r.status_code == 200 and r.json()["q"] == "via-redirect"


def test_concurrent_requests_keep_their_own_responses(micro):
    def one(i):
        with httpx.Client(base_url=str(micro.base_url), timeout=30) as c:
            return c.get(f"/items/{i}", params={"q": f"n{i}"}).json()

    results, _ = in_parallel(one, 8)
    assert [(r["id"], r["q"]) for r in results] == [(i, f"n{i}") for i in range(8)]


# ---- Starlette ------------------------------------------------------------------------------------


def test_starlette_cookies_round_trip(starlette):
    r = starlette.get("/cookies")
    assert sorted(v.split(";")[0] for v in r.headers.get_list("set-cookie")) == ["count=1", "flavour=oatmeal"]
    assert starlette.get("/cookies").json() == {"flavour": "oatmeal", "count": "1"}


def test_starlette_100_mib_request_stream_with_flat_memory(servers):
    srv = servers("starlette")
    size, block = 100 * MiB, os.urandom(MiB)
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        c.get("/")
        with rss_growth(srv.proc.pid) as growth:
            r = c.post("/stream-body", content=(block for _ in range(100)),
                       headers={"content-length": str(size)})
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["size"], got["sha256"]) == (size, hashlib.sha256(block * 100).hexdigest())
    assert got["chunks"] > 10
    assert growth.kib < 30 * 1024, growth


# ---- FastAPI --------------------------------------------------------------------------------------


def test_fastapi_query_validation(fastapi):
    r = fastapi.get("/items/5", params={"limit": "500"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "limit"]
    assert fastapi.get("/items/not-a-number").status_code == 422
    assert fastapi.get("/items/5", params={"limit": "3"}).json() == {"id": 5, "q": None, "limit": 3, "tags": []}


def test_fastapi_sync_endpoint(fastapi):
    assert fastapi.get("/sync-items/9").json() == {"id": 9, "sync": True}


def test_fastapi_dependency_injection(fastapi):
    assert fastapi.get("/di").status_code == 401
    assert fastapi.get("/di", headers={"x-token": "wrong"}).json() == {"detail": "bad token"}
    r = fastapi.get("/di", params={"request_id": "req-1", "page": 3}, headers={"x-token": "secret"})
    assert r.status_code == 200
    assert r.json() == {"token": "secret", "session": {"id": "req-1", "open": True}, "page": 3, "size": 20}
    # The yield dependency's cleanup ran once the request was over.
    assert wait_until(lambda: "req-1" in fastapi.get("/di/cleanups").json()["cleanups"])


def test_fastapi_openapi_and_docs(fastapi):
    schema = fastapi.get("/openapi.json").json()
    assert "/items/{item_id}" in schema["paths"] and "/upload" in schema["paths"]
    assert fastapi.get("/docs").status_code == 200


def test_fastapi_100_mib_file_upload_with_flat_memory(servers, tmp_path):
    srv = servers("fastapi")
    path = tmp_path / "big.bin"
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for _ in range(100):
            f.write(block)
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        c.get("/")
        with rss_growth(srv.proc.pid) as growth, open(path, "rb") as f:
            r = c.post("/upload", files={"file": ("big.bin", f, "application/octet-stream")}, data={"note": "big"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["size"], got["sha256"]) == (100 * MiB, hashlib.sha256(block * 100).hexdigest())
    assert growth.kib < 30 * 1024, growth


# ---- Django (ASGI handler) ------------------------------------------------------------------------


def test_django_sync_views_through_the_asgi_handler(django):
    assert django.get("/").text == "django index"
    r = django.post("/form", data={"name": "Zoë", "tags": ["a", "b"]})
    assert r.json() == {"fields": {"name": ["Zoë"], "tags": ["a", "b"]}, "method": "POST", "path": "/form"}
    r = django.get("/redirect", follow_redirects=True)
    assert r.text == "target via redirect" and [h.status_code for h in r.history] == [302]


def test_django_upload(django, upload_file):
    data = upload_file.read_bytes()
    r = django.post("/upload", files={"file": ("payload.bin", data, "application/octet-stream")},
                    data={"note": "two megabytes"})
    assert r.status_code == 200, r.text
    assert r.json() == {"filename": "payload.bin", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                        "note": "two megabytes"}


def test_django_cookies_and_sync_streaming(django):
    django.get("/set-cookie")
    assert django.get("/read-cookie").json() == {"flavour": "ginger"}
    with django.stream("GET", "/stream") as r:
        assert list(r.iter_lines()) == [f"line {i}" for i in range(5)]


def test_django_file_response(django, upload_file):
    r = django.get("/file")
    assert r.status_code == 200 and r.content == upload_file.read_bytes()


def test_django_async_json(django):
    r = django.post("/async/json", json={"numbers": [4, 5]})
    assert r.status_code == 201 and r.json() == {"received": {"numbers": [4, 5]}, "doubled": [8, 10]}


def test_django_async_views_run_concurrently(django):
    django.get("/async")
    def one(_):
        with httpx.Client(base_url=str(django.base_url), timeout=30) as c:
            return c.get("/async/sleep", params={"s": "0.5"}).json()

    results, elapsed = in_parallel(one, 6)
    assert results == [{"slept": True}] * 6
    assert elapsed < 2.5, f"6 concurrent 0.5 s async Django views took {elapsed:.2f} s"
