"""Real frameworks on the real server, driven by a real HTTP client (httpx): what a Flask or
Django user sees. The apps are in apps/flaskapp.py and apps/djangoapp/."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def flask_url(shared_server):
    return shared_server("flaskapp:app", "--threads", "2").url


@pytest.fixture(scope="module")
def upload_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("upload") / "payload.bin"
    path.write_bytes(os.urandom(2 * MiB + 7))
    return path


@pytest.fixture(scope="module")
def django_srv(tmp_path_factory, upload_file):
    # Its own process (a module-scoped Server) because the file view needs an environment variable.
    from conftest import Server
    import sys
    srv = Server([sys.executable, "-m", "fulmen", "--port", "0", "djangoapp.wsgi:application"],
                 {"DJANGO_TEST_FILE": str(upload_file)})
    yield srv
    srv.kill()


@pytest.fixture
def flask(flask_url):
    with httpx.Client(base_url=flask_url, timeout=20) as client:
        yield client


@pytest.fixture
def django(django_srv):
    with httpx.Client(base_url=django_srv.url, timeout=20) as client:
        yield client


# ---- Flask -----------------------------------------------------------------------------------------


def test_flask_index(flask):
    r = flask.get("/")
    assert r.status_code == 200 and r.text == "flask index"
    assert r.headers["server"] == "fulmen"


def test_flask_urlencoded_form(flask):
    r = flask.post("/form?page=2", data={"name": "Zoë & co", "tags": ["a", "b"]})
    assert r.status_code == 200
    assert r.json() == {"fields": {"name": ["Zoë & co"], "tags": ["a", "b"]}, "args": {"page": "2"}}


def test_flask_multipart_upload(flask, upload_file):
    data = upload_file.read_bytes()
    r = flask.post("/upload", files={"file": ("payload.bin", data, "application/octet-stream")},
                   data={"note": "two megabytes"})
    assert r.status_code == 200
    assert r.json() == {"filename": "payload.bin", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                        "mimetype": "application/octet-stream", "note": "two megabytes"}


def test_flask_upload_with_chunked_request_body(flask, upload_file):
    # httpx streams a generator body with Transfer-Encoding: chunked; Flask sees no Content-Length
    # and relies on wsgi.input_terminated.
    data = upload_file.read_bytes()
    boundary = "fulmenboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.bin\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()

    def gen():
        for i in range(0, len(body), 100_000):
            yield body[i:i + 100_000]

    r = flask.post("/upload", content=gen(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 200, r.text
    assert r.json()["sha256"] == hashlib.sha256(data).hexdigest()


def test_flask_json(flask):
    r = flask.post("/json", json={"numbers": [1, 2, 3], "text": "héllo"})
    assert r.status_code == 201
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"received": {"numbers": [1, 2, 3], "text": "héllo"}, "doubled": [2, 4, 6]}


def test_flask_redirect(flask):
    r = flask.get("/redirect")
    assert r.status_code == 302 and r.headers["location"] == "/target?via=redirect"
    r = flask.get("/redirect", follow_redirects=True)
    assert r.status_code == 200 and r.text == "target via redirect"
    assert [h.status_code for h in r.history] == [302]


def test_flask_cookies_round_trip(flask):
    r = flask.get("/set-cookie")
    assert r.status_code == 200
    # Two Set-Cookie fields stay two fields (never joined with a comma).
    assert sorted(v.split(";")[0] for v in r.headers.get_list("set-cookie")) == ["count=1", "flavour=oatmeal"]
    r = flask.get("/read-cookie")
    assert r.json() == {"flavour": "oatmeal", "count": "1"}


def test_flask_stream_with_context(flask):
    with flask.stream("GET", "/stream?name=ada") as r:
        assert r.status_code == 200
        assert r.headers["transfer-encoding"] == "chunked"
        lines = list(r.iter_lines())
    assert lines == [f"{i}:ada" for i in range(5)]


def test_flask_view_error_is_500_and_logged(flask, flask_url, shared_server):
    r = flask.get("/error")
    assert r.status_code == 500
    assert flask.get("/").status_code == 200
    srv = shared_server("flaskapp:app", "--threads", "2")
    assert srv.wait_for_log("RuntimeError: flask view failed")


def test_flask_keep_alive_connection_is_reused(flask):
    # httpx pools connections: many requests, and the server must keep them framed correctly.
    for i in range(20):
        assert flask.post("/json", json={"numbers": [i]}).json()["doubled"] == [2 * i]


# ---- Django -----------------------------------------------------------------------------------------


def test_django_index(django):
    r = django.get("/")
    assert r.status_code == 200 and r.text == "django index"


def test_django_form_post(django):
    r = django.post("/form", data={"name": "Ünïcode", "choice": ["x", "y"]})
    assert r.status_code == 200
    assert r.json() == {"fields": {"name": ["Ünïcode"], "choice": ["x", "y"]}, "method": "POST", "path": "/form"}


def test_django_file_upload(django, upload_file):
    data = upload_file.read_bytes()
    r = django.post("/upload", files={"file": ("payload.bin", data, "application/octet-stream")},
                    data={"note": "via django"})
    assert r.status_code == 200
    assert r.json() == {"filename": "payload.bin", "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(), "note": "via django"}


def test_django_redirect(django):
    r = django.get("/redirect", follow_redirects=True)
    assert r.status_code == 200 and r.text == "target via redirect"
    assert r.history[0].status_code == 302


def test_django_cookies(django):
    r = django.get("/set-cookie")
    assert r.cookies.get("flavour") == "ginger"
    assert django.get("/read-cookie").json() == {"flavour": "ginger"}


def test_django_streaming_response(django):
    with django.stream("GET", "/stream") as r:
        assert r.status_code == 200
        assert "content-length" not in r.headers
        assert list(r.iter_lines()) == [f"line {i}" for i in range(5)]


def test_django_file_response_through_file_wrapper(django, upload_file):
    data = upload_file.read_bytes()
    r = django.get("/file")
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(data))
    assert r.content == data
    # And again on the same (kept-alive) connection: the framing after sendfile is exact.
    assert django.get("/file").content == data
    assert django.get("/").text == "django index"


def test_django_csrf_is_enforced_on_protected_views(django):
    # The upload view is exempt; a POST to a protected URL would get 403 (sanity check that the
    # middleware really runs under Fulmen).
    r = django.post("/read-cookie", data={"a": "b"})
    assert r.status_code == 403


def test_django_404(django):
    assert django.get("/nope").status_code == 404
