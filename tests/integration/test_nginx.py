"""Fulmen behind a real nginx (Debian's nginx-light), the way docs/proxies.md tells you to run it:
nginx proxies to Fulmen over TCP and over a Unix socket with keep-alive upstream connections and
X-Forwarded-For/-Proto; with the stream module, nginx also speaks the PROXY protocol to Fulmen.

nginx runs in the foreground (daemon off) with every path in the test's tmp dir. It listens on a
socket this process bound to port 0 and hands over (nginx inherits listening sockets named in the
NGINX variable, the mechanism of its binary upgrade), so there is no port to guess or race for.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")

pytestmark = pytest.mark.skipif(not os.access(NGINX, os.X_OK), reason="nginx is not installed")

# What docs/proxies.md recommends: HTTP/1.1 upstream with an empty Connection header, so that the
# upstream connections are kept alive and reused (keepalive in the upstream block).
PROXY_COMMON = """
            proxy_pass http://fulmen;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
"""
FORWARDED_HEADERS = """
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto {proto};
"""


def tool_env() -> dict[str, str]:
    """Our environment without the sanitizer run's LD_PRELOAD and options: nginx is a tool here,
    not code under test (Fulmen itself keeps them)."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}


class Nginx:
    def __init__(self, tmp: Path, http_upstream: str | None = None, stream_upstream: str | None = None) -> None:
        self.tmp = tmp
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        fd = self.listener.fileno()
        conf = [f"daemon off;", "worker_processes 1;", f"pid {tmp}/nginx.pid;", f"error_log {tmp}/error.log info;"]
        if os.geteuid() == 0:
            # As root, nginx's workers would switch to "nobody", who cannot reach a socket in the
            # test's private tmp dir; they run as we do (unprivileged, nginx cannot switch anyway).
            conf.append(f"user {pwd.getpwuid(0).pw_name};")
        if stream_upstream:
            conf.insert(0, f"load_module {STREAM_MODULE};")
        conf.append("events { worker_connections 128; }")
        if http_upstream:
            locations = "".join(
                f"        location {path} {{{PROXY_COMMON}{headers}        }}\n"
                for path, headers in (("/", FORWARDED_HEADERS.format(proto="$scheme")),
                                      ("/tls/", FORWARDED_HEADERS.format(proto="https")),  # as TLS at nginx
                                      ("/raw/", "")))  # no forwarding headers: nginx's own address
            conf.append(f"""
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream fulmen {{
        server {http_upstream};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{self.port};
{locations}    }}
}}""")
        if stream_upstream:
            conf.append(f"""
stream {{
    server {{
        listen 127.0.0.1:{self.port};
        proxy_pass {stream_upstream};
        proxy_protocol on;
    }}
}}""")
        (tmp / "nginx.conf").write_text("\n".join(conf) + "\n")
        # Its output goes to a file: nobody reads a pipe, which could fill up and stall nginx.
        self.output = open(tmp / "output.log", "wb")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")],
            env={**tool_env(), "NGINX": f"{fd};"}, pass_fds=(fd,), stdout=self.output, stderr=subprocess.STDOUT)
        # nginx owns the socket now: if it dies, connections are refused instead of hanging.
        self.listener.close()

    def log(self) -> str:
        paths = (self.tmp / "output.log", self.tmp / "error.log")
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.output.close()


@pytest.fixture
def nginx(tmp_path):
    started: list[Nginx] = []

    def start(**kwargs) -> Nginx:
        prefix = tmp_path / f"nginx{len(started)}"
        prefix.mkdir()
        n = Nginx(prefix, **kwargs)
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


def get(ngx: Nginx, path: str, source: str = "127.0.0.2", headers: dict[str, str] | None = None) -> dict:
    """GET through nginx from `source` (another loopback address, so that the client's address
    differs from nginx's own 127.0.0.1 towards Fulmen)."""
    conn = http.client.HTTPConnection("127.0.0.1", ngx.port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Host": "app.example", **(headers or {})})
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        raise AssertionError(f"request through nginx failed: {exc}\nnginx log:\n{ngx.log()}") from None
    finally:
        conn.close()
    assert resp.status == 200, (resp.status, body, ngx.log())
    return json.loads(body)


def unix_connections(path: str) -> set[str]:
    """Inodes of the connected sockets on the Unix socket `path` (the ones Fulmen accepted)."""
    out = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == path and fields[5] == "03":
            out.add(fields[6])
    return out


REQUESTS = 12


def test_nginx_tcp_upstream(server, nginx):
    srv = server("echo_environ:app", "--proxy-headers")
    ngx = nginx(http_upstream=f"127.0.0.1:{srv.port}")
    env = get(ngx, "/")
    assert env["REMOTE_ADDR"] == "127.0.0.2"  # the client, from X-Forwarded-For
    assert env["wsgi.url_scheme"] == "http" and env["HTTP_HOST"] == "app.example"
    assert env["HTTP_X_FORWARDED_FOR"] == "127.0.0.2"
    env = get(ngx, "/tls/")
    assert env["wsgi.url_scheme"] == "https" and env["REMOTE_ADDR"] == "127.0.0.2"
    # Keep-alive upstream: sequential requests (a new client connection each) share nginx's
    # connections to Fulmen; /raw/ sends no forwarding headers, so REMOTE_PORT is nginx's port.
    ports = set()
    for _ in range(REQUESTS):
        env = get(ngx, "/raw/")
        assert env["REMOTE_ADDR"] == "127.0.0.1"
        ports.add(env["REMOTE_PORT"])
    assert 1 <= len(ports) <= 2, ports  # without reuse there would be one port per request


# What a client sends to forge its address, scheme and Host: nginx, configured as docs/proxies.md
# says, passes Forwarded, X-Forwarded-Host and X-Forwarded-Port through and appends to X-Forwarded-For.
FORGED = {"Forwarded": "for=6.6.6.6;proto=https;host=evil.com", "X-Forwarded-Host": "evil.com",
          "X-Forwarded-Port": "8443", "X-Forwarded-For": "foo", "X-Forwarded-Proto": "https"}


@pytest.mark.parametrize("app", ["echo_environ:app", "asgi_scope:app"])
def test_nginx_client_cannot_forge_forwarding(server, nginx, app):
    srv = server(app, "--proxy-headers")  # default --forwarded-headers
    ngx = nginx(http_upstream=f"127.0.0.1:{srv.port}")
    seen = get(ngx, "/", headers=FORGED)
    if app.startswith("echo_environ"):
        assert seen["HTTP_X_FORWARDED_FOR"] == "foo, 127.0.0.2"  # nginx appended; "foo" is not parsed
        assert seen["REMOTE_ADDR"] == "127.0.0.2" and seen["wsgi.url_scheme"] == "http"
        assert seen["HTTP_HOST"] == "app.example" and seen["SERVER_NAME"] == "127.0.0.1"
        assert seen["SERVER_PORT"] == str(srv.port)
        assert seen["HTTP_FORWARDED"] == FORGED["Forwarded"]  # visible, not believed
    else:
        assert seen["client"]["tuple"] == ["127.0.0.2", 0] and seen["scheme"] == "http"
        assert seen["server"]["tuple"] == ["127.0.0.1", srv.port]


def test_nginx_tcp_upstream_asgi(server, nginx):
    srv = server("asgi_scope:app", "--proxy-headers")
    ngx = nginx(http_upstream=f"127.0.0.1:{srv.port}")
    scope = get(ngx, "/tls/")
    assert scope["client"]["tuple"] == ["127.0.0.2", 0] and scope["scheme"] == "https"
    ports = {get(ngx, "/raw/")["client"]["tuple"][1] for _ in range(REQUESTS)}
    assert 1 <= len(ports) <= 2, ports


def test_nginx_unix_upstream(server, nginx, tmp_path):
    path = str(tmp_path / "fulmen.sock")
    srv = server("echo_environ:app", "--uds", path, "--uds-mode", "600", "--proxy-headers",
                 "--forwarded-allow-ips", "unix")
    ngx = nginx(http_upstream=f"unix:{path}")
    env = get(ngx, "/tls/")
    assert env["REMOTE_ADDR"] == "127.0.0.2" and env["wsgi.url_scheme"] == "https"
    assert env["SERVER_NAME"] == path
    seen: set[str] = set()
    for _ in range(REQUESTS):
        assert "REMOTE_ADDR" not in get(ngx, "/raw/")  # a Unix peer has no address
        seen |= unix_connections(path)  # nginx keeps its upstream connection open between requests
    assert 1 <= len(seen) <= 2, seen
    assert srv.proc.poll() is None


@pytest.mark.skipif(not STREAM_MODULE.exists(), reason="nginx's stream module is not installed "
                    "(Debian: libnginx-mod-stream)")
@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
def test_nginx_stream_proxy_protocol(server, nginx, tmp_path, unix):
    if unix:
        path = str(tmp_path / "pp.sock")
        srv = server("echo_environ:app", "--uds", path, "--proxy-protocol")
        ngx = nginx(stream_upstream=f"unix:{path}")
    else:
        srv = server("echo_environ:app", "--proxy-protocol")
        ngx = nginx(stream_upstream=f"127.0.0.1:{srv.port}")
    conn = http.client.HTTPConnection("127.0.0.1", ngx.port, timeout=10, source_address=("127.0.0.3", 0))
    try:
        conn.request("GET", "/pp")
        resp = conn.getresponse()
        env = json.loads(resp.read())
        client_port = conn.sock.getsockname()[1]
    finally:
        conn.close()
    assert resp.status == 200
    # nginx's PROXY v1 header carries the client's real address and port.
    assert env["REMOTE_ADDR"] == "127.0.0.3" and env["REMOTE_PORT"] == str(client_port), ngx.log()
