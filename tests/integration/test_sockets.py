"""Several listening sockets in one process: --bind (TCP v4/v6, unix:, fd://), --uds-mode, and
systemd socket activation through Debian's real systemd-socket-activate."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time

import pytest

from conftest import APPS, Server, _UnixHTTPConnection, fulmen_env, run_fulmen

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"


def get(target, path: str = "/", headers: dict | None = None) -> tuple[int, bytes]:
    """GET over TCP ("host", port) or a Unix socket path."""
    if isinstance(target, str):
        conn: http.client.HTTPConnection = _UnixHTTPConnection(target, timeout=10)
    else:
        conn = http.client.HTTPConnection(target[0], target[1], timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def listening(srv: Server, count: int | None = None, timeout: float = 10) -> list[str]:
    """The "Listening on" lines; with `count`, waits until that many were logged (one per socket,
    written one after another: the fixture returns after the first)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = re.findall(r"\[INFO\] Listening on (.+)", srv.output)
        if count is None or len(lines) >= count or time.monotonic() > deadline:
            return lines
        with srv._stderr.cond:  # woken by every new line the server logs
            srv._stderr.cond.wait(0.5)


def tcp_address(line: str) -> tuple[str, int]:
    m = re.search(r"http://(?:\[([^\]]+)\]|([^:/\s]+)):(\d+)", line)
    assert m, line
    return m.group(1) or m.group(2), int(m.group(3))


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_several_binds_in_one_process(server, tmp_path):
    path = str(tmp_path / "a.sock")
    binds = ["--bind", "127.0.0.1:0", "--bind", f"unix:{path}"]
    if has_ipv6_loopback():
        binds += ["--bind", "[::1]:0"]
    srv = server("echo_environ:app", *binds)
    lines = listening(srv, len(binds) // 2)
    assert len(lines) == len(binds) // 2, srv.output
    seen = set()
    for line in lines:
        if line.startswith("unix:"):
            status, body = get(path, "/u")
            env = json.loads(body)
            assert status == 200 and env["SERVER_NAME"] == path and env["SERVER_PORT"] == "0"
            seen.add("unix")
        else:
            host, port = tcp_address(line)
            status, body = get((host, port), "/t")
            env = json.loads(body)
            assert status == 200 and env["SERVER_NAME"] == host and env["SERVER_PORT"] == str(port)
            assert env["PATH_INFO"] == "/t"
            seen.add(host)
    assert {"unix", "127.0.0.1"} <= seen
    assert srv.stop() == 0
    assert not os.path.exists(path)  # the socket file Fulmen created is removed


def test_bind_replaces_host_and_port(server):
    # --port names a port that is in use: it must not be bound, since --bind is given.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        srv = server("echo_environ:app", "--port", str(busy.getsockname()[1]), "--bind", "127.0.0.1:0")
        lines = listening(srv)
        assert len(lines) == 1 and tcp_address(lines[0])[1] != busy.getsockname()[1]
        assert get(tcp_address(lines[0]))[0] == 200


def test_bind_adds_to_uds_and_fd(server, tmp_path):
    path = str(tmp_path / "u.sock")
    with socket.socket() as pre:
        pre.bind(("127.0.0.1", 0))
        pre.listen()
        fd = pre.fileno()
        srv = server("echo_environ:app", "--uds", path, "--fd", str(fd), "--bind", "127.0.0.1:0",
                     pass_fds=(fd,))
        lines = listening(srv, 3)
        assert len(lines) == 3, srv.output
        assert get(path)[0] == 200
        assert get(("127.0.0.1", pre.getsockname()[1]))[0] == 200
        assert get(tcp_address(lines[0]))[0] == 200


def test_bind_from_environment_with_spaces_and_commas(server, tmp_path):
    a, b = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    srv = server("echo_environ:app", env={"FULMEN_BIND": f"unix:{a}, unix:{b}  127.0.0.1:0"})
    assert len(listening(srv, 3)) == 3, srv.output
    assert get(a)[0] == 200 and get(b)[0] == 200
    assert get(tcp_address(listening(srv)[2]))[0] == 200


def test_bind_fd_form(server):
    with socket.socket() as pre:
        pre.bind(("127.0.0.1", 0))
        pre.listen()
        fd = pre.fileno()
        srv = server("echo_environ:app", "--bind", f"fd://{fd}", pass_fds=(fd,))
        assert get(("127.0.0.1", pre.getsockname()[1]))[0] == 200
        assert f"fd://{fd}" in srv.output


@pytest.mark.parametrize("mode, expected", [("600", 0o600), ("0o660", 0o660), ("0777", 0o777)])
def test_uds_mode(server, tmp_path, mode, expected):
    a, b = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    srv = server("echo_environ:app", "--uds", a, "--bind", f"unix:{b}", "--uds-mode", mode)
    for path in (a, b):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == expected
        assert get(path)[0] == 200
    srv.stop()


@pytest.mark.parametrize("args, expected", [
    (["--bind", "localhost"], ["--bind localhost", "HOST:PORT"]),
    (["--bind", "127.0.0.1:70000"], ["--bind 127.0.0.1:70000", "0-65535"]),
    (["--bind", "unix:"], ["--bind unix:", "no socket path"]),
    (["--bind", "fd://x"], ["--bind fd://x", "descriptor number"]),
    (["--bind", "::1:80"], ["--bind ::1:80", "[IPV6]:PORT"]),
    (["--uds-mode", "999"], ["--uds-mode 999", "octal"]),
    (["--uds-mode", "rw-rw----"], ["--uds-mode rw-rw----", "octal"]),
    (["--uds-mode", "1777"], ["--uds-mode 1777", "at most 777"]),
    (["--bind", "256.1.1.1:0"], ["256.1.1.1", "--bind"]),
])
def test_bad_socket_options(args, expected):
    result = run_fulmen(*args, "hello:app")
    assert result.returncode == 1, result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_bad_bind_variable():
    result = run_fulmen("hello:app", env={"FULMEN_BIND": "127.0.0.1:0 nonsense"})
    assert result.returncode == 1 and "nonsense" in result.stderr and "HOST:PORT" in result.stderr


def test_a_failed_bind_closes_the_others(tmp_path):
    path = tmp_path / "first.sock"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run_fulmen("--bind", f"unix:{path}", "--bind", f"127.0.0.1:{busy.getsockname()[1]}",
                            "hello:app")
    assert result.returncode == 1 and "Address already in use" in result.stderr, result.stderr
    assert not path.exists()  # the Unix socket bound first was removed again


def test_same_fd_twice_is_an_error():
    with socket.socket() as pre:
        pre.bind(("127.0.0.1", 0))
        pre.listen()
        fd = pre.fileno()
        result = run_fulmen("--fd", str(fd), "--bind", f"fd://{fd}", "hello:app", pass_fds=(fd,))
    assert result.returncode == 1 and "same descriptor" in result.stderr, result.stderr


# ---- systemd socket activation ------------------------------------------------------------------

needs_socket_activate = pytest.mark.skipif(not os.access(SOCKET_ACTIVATE, os.X_OK),
                                           reason="systemd-socket-activate is not installed")


@needs_socket_activate
@pytest.mark.parametrize("workers", [None, "2"])
def test_systemd_socket_activation_tcp_and_unix(tmp_path, workers):
    """systemd-socket-activate listens on a Unix socket (-l PATH) and passes through a TCP socket
    we bound to port 0 (it forwards sockets it received via LISTEN_FDS, so no free-port guess);
    on the first connection it execs Fulmen with LISTEN_FDS=2, LISTEN_PID and LISTEN_FDNAMES (and
    an environment of its own: hence --app-dir). With --workers the supervisor takes the sockets
    and its forked workers serve them."""
    path = str(tmp_path / "activated.sock")
    pre = socket.socket()
    pre.bind(("127.0.0.1", 0))
    pre.listen()
    port = pre.getsockname()[1]
    os.set_inheritable(pre.fileno(), True)
    # fd 3 in the child is our TCP socket (bash: dash cannot name fds above 9); `exec` keeps the
    # shell's pid, so LISTEN_PID=$$ is systemd-socket-activate's pid, which stays Fulmen's after it
    # execs.
    # systemd-socket-activate gives its child a fresh environment: -E passes on the sanitizer
    # run's preload (the ASan build of the engine needs it) when there is one.
    keep = " ".join(f"-E {k}" for k in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS") if k in os.environ)
    script = (f'exec 3<&{pre.fileno()}; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" -l "$1" --fdname=web:local {keep} '
              f'"$2" -m fulmen --no-access-log --app-dir "$3" {"--workers " + workers if workers else ""} sd_env:app')
    srv = Server(["bash", "-c", script, SOCKET_ACTIVATE, path, sys.executable, str(APPS)], None,
                 pass_fds=(pre.fileno(),),
                 ready=re.compile(r"Listening on (\S+) as 4\."))
    pre.close()
    try:
        # This connection wakes systemd-socket-activate, which starts Fulmen: the request waits in
        # the socket's backlog until Fulmen accepts it.
        try:
            status, body = get(path)
        except OSError as exc:
            raise AssertionError(f"{exc}; server output:\n{srv.output}") from None
        assert status == 200, srv.output
        data = json.loads(body)
        assert data["listen"] == {}  # unset for the app and its children, as sd_listen_fds(1) does
        assert data["SERVER_NAME"] == path
        # Served by a forked worker under --workers, by the activated process itself otherwise.
        assert (data["pid"] != srv.proc.pid) == bool(workers), srv.output
        status, body = get(("127.0.0.1", port))
        assert status == 200 and json.loads(body)["SERVER_PORT"] == str(port)
        assert srv.wait_for_log(r"Listening on fd://3 \(http://127\.0\.0\.1:%d\) from systemd \(web\)" % port), \
            srv.output
        assert srv.wait_for_log(r"Listening on fd://4 \(unix:.*activated\.sock\) from systemd \(local\)"), srv.output
        assert srv.stop() == 0
        assert os.path.exists(path)  # systemd's socket file: not ours to remove
    finally:
        srv.kill()


def test_listen_fds_for_another_process_are_ignored(server):
    with socket.socket() as pre:
        pre.bind(("127.0.0.1", 0))
        pre.listen()
        os.set_inheritable(pre.fileno(), True)
        # LISTEN_PID names some other process: Fulmen binds --host/--port as usual.
        srv = server("sd_env:app", env={"LISTEN_FDS": "1", "LISTEN_PID": "1"})
        assert len(listening(srv)) == 1 and srv.port != pre.getsockname()[1]
        assert json.loads(srv.request()[2])["listen"] == {}


@pytest.mark.parametrize("fds, expected", [("two", "LISTEN_FDS='two'"), ("1", "LISTEN_FDS: fd 3")])
def test_bad_listen_fds(fds, expected):
    # A shell that execs Python keeps its pid, so LISTEN_PID=$$ is meant for Fulmen; fd 3 is closed.
    result = subprocess.run(["sh", "-c", f'exec 3<&-; LISTEN_PID=$$ LISTEN_FDS={fds} exec "$0" -m fulmen hello:app',
                             sys.executable], env={k: v for k, v in fulmen_env().items()
                                                   if not k.startswith("LISTEN_")},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and expected in result.stderr, result.stderr


# ---- the same options through fulmen.run() ----------------------------------------------------

def test_run_keyword_arguments():
    from fulmen import config

    cfg = config.from_kwargs({"bind": ["127.0.0.1:0", "unix:/tmp/x.sock", "[::1]:8000", "fd://7"],
                              "uds_mode": "0660", "forwarded_allow_ips": "10.0.0.0/8, ::1, unix"})
    assert cfg["bind"] == (("tcp", "127.0.0.1", 0), ("unix", "/tmp/x.sock"), ("tcp", "[::1]", 8000), ("fd", 7))
    assert cfg["uds_mode"] == 0o660
    assert cfg["forwarded_allow_ips"] == ("10.0.0.0/8", "::1/128", "unix")
    assert config.from_kwargs({"bind": "127.0.0.1:1 127.0.0.1:2"})["bind"] == (("tcp", "127.0.0.1", 1),
                                                                              ("tcp", "127.0.0.1", 2))
    assert config.from_kwargs({})["forwarded_allow_ips"] == ("127.0.0.1/32",)
    for bad in ({"bind": ["nowhere"]}, {"uds_mode": "888"}, {"forwarded_allow_ips": "x"},
                {"limit_concurrency": 0}, {"bind": 5}):
        with pytest.raises(ValueError) as info:
            config.from_kwargs(bad)
        assert next(iter(bad)) in str(info.value)


def test_ipv6_wildcard_is_v6_only_so_both_wildcards_can_listen():
    """--bind 0.0.0.0:P --bind [::]:P: the IPv6 socket is IPV6_V6ONLY (as socket.create_server and
    asyncio make it), so the IPv4 one can take the same port."""
    from fulmen import _sockets

    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    v6 = _sockets.bind_tcp("[::]", 0, 16, "--bind")
    try:
        assert v6.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        v4 = _sockets.bind_tcp("0.0.0.0", v6.server_port, 16, "--bind")
        v4.close()
    finally:
        v6.close()


def test_an_inherited_socket_is_not_passed_on_to_the_apps_children():
    from fulmen import _sockets

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        fd = os.dup(s.fileno())
        os.set_inheritable(fd, True)
        listener = _sockets.from_fd(fd, "--fd ")
        try:
            assert not os.get_inheritable(fd)
        finally:
            listener.close()
