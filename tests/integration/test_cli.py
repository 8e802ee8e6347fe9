"""The `fulmen` command as users run it: a real process, its output and its exit code.

Start-up errors must be one line "Error: ..." on stderr and exit code 1 (plus the user's own
traceback when their code raised). Serving tests need the built engine (`make build`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import APPS, fulmen_env, run_fulmen

import fulmen
from fulmen import config

ROOT = Path(__file__).resolve().parents[2]


def _engine_serves_asgi() -> bool:
    try:
        from fulmen import _core
    except ImportError:
        return False
    return hasattr(_core.Server, "serve_asyncio")


needs_asgi_engine = pytest.mark.skipif(
    not _engine_serves_asgi(), reason="fulmen._core.Server has no serve_asyncio: the ASGI bridge is not built yet")


def assert_error(result: subprocess.CompletedProcess, *expected: str, traceback: bool = False) -> str:
    """Exit code 1, the last stderr line is "Error: ..." containing `expected`; returns that line."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines, "no error message"
    last = lines[-1]
    assert last.startswith("Error: "), result.stderr
    for text in expected:
        assert text in last, f"{text!r} not in {last!r}"
    assert ("Traceback" in result.stderr) == traceback, result.stderr
    if not traceback:
        assert len(lines) == 1, result.stderr
    return last


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- help, version, laziness -------------------------------------------------------------------


def test_help_lists_every_option_and_its_variable():
    result = run_fulmen("--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("usage: fulmen")
    for opt in config.OPTIONS:
        if not opt.positional:
            assert opt.flag in out, opt.flag
        assert opt.env in out, opt.env
    assert "--no-access-log" in out and "--version" in out


def test_version_matches_package_and_pyproject():
    result = run_fulmen("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"fulmen {fulmen.__version__}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(fulmen.__version__)}"', pyproject, re.M)


def test_help_and_version_do_not_load_the_engine():
    # They must answer instantly and even on a broken build.
    code = ("import sys; from fulmen.cli import main\n"
            "for args in (['--help'], ['--version']):\n"
            "    try: main(args)\n"
            "    except SystemExit: pass\n"
            "assert 'fulmen._core' not in sys.modules and 'socket' not in sys.modules, sorted(sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_console_script_is_the_same_command():
    script = Path(sys.executable).parent / "fulmen"
    if not script.exists():
        pytest.skip("fulmen is not installed as a package in this interpreter (make build)")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == f"fulmen {fulmen.__version__}"


# --- invalid options and environment variables ---------------------------------------------------


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["--port", "70000"], {}, ["--port 70000", "between 0 and 65535"]),
        (["--port", "abc"], {}, ["--port abc", "integer"]),
        (["--threads", "0"], {}, ["--threads 0", "at least 1"]),
        (["--backlog", "-5"], {}, ["--backlog -5", "at least 1"]),
        (["--log-level", "loud"], {}, ["--log-level loud", "critical, error, warning, info, debug, trace"]),
        (["--interface", "cgi"], {}, ["--interface cgi", "auto, wsgi, asgi"]),
        (["--loop", "tokio"], {}, ["--loop tokio", "auto, asyncio, uvloop"]),
        (["--lifespan", "maybe"], {}, ["--lifespan maybe", "auto, on, off"]),
        ([], {"FULMEN_LOOP": "trio"}, ["FULMEN_LOOP=trio", "auto, asyncio, uvloop"]),
        ([], {"FULMEN_LIFESPAN": "ON"}, ["FULMEN_LIFESPAN=ON", "auto, on, off"]),
        (["--limit-request-line", "9000"], {}, ["--limit-request-line 9000", "between 0 and 8190"]),
        (["--limit-request-fields", "40000"], {}, ["--limit-request-fields 40000", "between 0 and 32768"]),
        (["--limit-request-body", "-1"], {}, ["--limit-request-body -1", "at least 0"]),
        (["--timeout-keep-alive", "soon"], {}, ["--timeout-keep-alive soon", "number"]),
        (["--graceful-timeout", "-1"], {}, ["--graceful-timeout -1", "at least 0"]),
        (["--bogus"], {}, ["unrecognized arguments: --bogus"]),
        (["--port"], {}, ["--port", "expected one argument"]),
        ([], {"FULMEN_PORT": "abc"}, ["FULMEN_PORT=abc", "integer"]),
        ([], {"FULMEN_THREADS": "0"}, ["FULMEN_THREADS=0", "at least 1"]),
        ([], {"FULMEN_ACCESS_LOG": "maybe"}, ["FULMEN_ACCESS_LOG=maybe", "true/false"]),
        ([], {"FULMEN_LOG_LEVEL": "LOUD"}, ["FULMEN_LOG_LEVEL=LOUD"]),
        ([], {"FULMEN_GRACEFUL_TIMEOUT": "nan"}, ["FULMEN_GRACEFUL_TIMEOUT=nan", "finite"]),
        (["--ws", "websockets"], {}, ["--ws websockets", "auto, on, off"]),
        (["--ws-max-size", "0"], {}, ["--ws-max-size 0", "at least 1"]),
        (["--ws-ping-interval", "-1"], {}, ["--ws-ping-interval -1", "at least 0"]),
        (["--ws-ping-timeout", "often"], {}, ["--ws-ping-timeout often", "number"]),
        (["--ws-per-message-deflate", "maybe"], {}, ["--ws-per-message-deflate maybe", "true/false"]),
        (["--ws-per-message-deflate"], {}, ["--ws-per-message-deflate", "expected one argument"]),
        ([], {"FULMEN_WS_PER_MESSAGE_DEFLATE": "sometimes"}, ["FULMEN_WS_PER_MESSAGE_DEFLATE=sometimes", "true/false"]),
    ],
)
def test_invalid_values_name_the_option(args, env, expected):
    assert_error(run_fulmen("hello:app", *args, env=env), *expected)


def test_no_app_given():
    assert_error(run_fulmen(), "no application given", "FULMEN_APP")


def test_command_line_beats_environment():
    # Both invalid: the error must be about the command-line value, the one that is used.
    last = assert_error(run_fulmen("--port", "70000", "hello:app", env={"FULMEN_PORT": "abc"}), "--port 70000")
    assert "FULMEN_PORT" not in last
    # A valid command-line value hides an invalid environment value entirely.
    result = run_fulmen("--threads", "2", "--log-level", "info", "not_callable:app",
                        env={"FULMEN_THREADS": "0", "FULMEN_LOG_LEVEL": "loud"})
    assert_error(result, "not callable")


def test_boolean_environment_values():
    # FULMEN_FACTORY=yes makes APP a factory: calling this non-factory then fails in a telling way.
    assert_error(run_fulmen("factory:not_a_factory", env={"FULMEN_FACTORY": "yes"}), "--factory")
    # ... and --no-factory on the command line wins.
    assert_error(run_fulmen("--no-factory", "factory:not_a_factory", env={"FULMEN_FACTORY": "1"}),
                 "not callable", "factory:not_a_factory")


def test_empty_environment_variable_counts_as_unset():
    # FULMEN_UDS= (as in many container configs) must not mean "a Unix socket named ''".
    assert_error(run_fulmen("not_callable:app", env={"FULMEN_UDS": "", "FULMEN_PORT": ""}), "not callable")


def test_app_from_environment():
    assert_error(run_fulmen(env={"FULMEN_APP": "not_callable:app"}), "not_callable:app", "not callable")


def test_run_rejects_invalid_options():
    code = ("import fulmen\n"
            "try: fulmen.run('hello:app', port=70000)\n"
            "except ValueError as e: print('ValueError', e)\n"
            "try: fulmen.run('hello:app', prot=1)\n"
            "except TypeError as e: print('TypeError', e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "ValueError invalid port=70000: must be between 0 and 65535" in result.stdout
    assert "TypeError" in result.stdout and "prot" in result.stdout


# --- loading the application --------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("no_such_module_xyz:app", ["could not import module 'no_such_module_xyz'", "no module named"]),
        ("no_such_pkg_xyz.sub:app", ["could not import module 'no_such_pkg_xyz.sub'"]),
        ("hello:missing", ["attribute 'missing' not found in module 'hello'"]),
        ("hello:nested.missing", ["attribute 'missing' not found"]),
        ("not_callable:app", ["not_callable:app is not callable", "str"]),
        ("hello", ['"module:attribute"', "'hello'"]),
        ("hello:", ['"module:attribute"']),
        (":app", ['"module:attribute"']),
    ],
)
def test_app_errors(spec, expected):
    assert_error(run_fulmen(spec), *expected)


@pytest.mark.parametrize(
    "spec, shown",
    [
        ("raises_on_import:app", ["RuntimeError: boom while importing raises_on_import", "raises_on_import.py"]),
        # The module exists; an import inside it fails: that is the user's bug, not a wrong APP.
        ("imports_missing:app", ["No module named 'fulmen_test_no_such_dependency'", "imports_missing.py"]),
    ],
)
def test_errors_inside_the_module_show_its_traceback(spec, shown):
    result = run_fulmen(spec)
    last = assert_error(result, f"importing module '{spec.split(':')[0]}'", traceback=True)
    assert "could not import module" not in last
    for text in shown:
        assert text in result.stderr
    assert "fulmen/_importer.py" not in result.stderr  # our frames are noise there


def test_app_dir_option():
    result = run_fulmen("--app-dir", "/nonexistent-fulmen-dir", "hello:app", env={"FULMEN_APP_DIR": None})
    assert_error(result, "--app-dir '/nonexistent-fulmen-dir' is not a directory")
    # Without --app-dir (default ".") the apps are importable from their own directory only.
    assert_error(run_fulmen("not_callable:app", env={"FULMEN_APP_DIR": None}, cwd=APPS), "not callable")
    assert_error(run_fulmen("not_callable:app", env={"FULMEN_APP_DIR": None}, cwd="/"), "could not import module")


def test_factory_errors():
    result = run_fulmen("--factory", "factory:failing_factory")
    assert_error(result, "the factory factory:failing_factory raised ValueError", traceback=True)
    assert "factory could not read its settings" in result.stderr and "factory.py" in result.stderr
    assert_error(run_fulmen("--factory", "factory:not_a_factory"), "not callable", "--factory")
    assert_error(run_fulmen("--factory", "factory:returns_not_callable"), "returned an int")


@needs_asgi_engine
@pytest.mark.parametrize("spec", ["asgi_app:app", "asgi_app:App2", "asgi_app:instance", "asgi_app:partial"])
def test_asgi_app_is_detected_and_served(server, spec):
    srv = server(spec)
    assert "(ASGI, " in srv.output
    assert srv.request()[:3:2] == (200, b"asgi")
    assert srv.stop() == 0
    assert "Finished" in srv.output


def test_interface_detection():
    # In-process: the heuristic itself, including the cases a real process cannot easily show.
    import functools

    from fulmen._importer import detect_interface

    sys.path.insert(0, str(APPS))
    try:
        import asgi_app
        import hello
    finally:
        sys.path.remove(str(APPS))

    class Asgi3Class:  # instances are awaitable: App(scope, receive, send)
        def __init__(self, scope, receive, send): ...
        def __await__(self): yield

    def wsgi_wrapper(environ, start_response):
        return hello.app(environ, start_response)

    assert detect_interface(asgi_app.app) == "asgi3"
    assert detect_interface(asgi_app.partial) == "asgi3"
    assert detect_interface(functools.partial(functools.partial(asgi_app.app))) == "asgi3"
    assert detect_interface(asgi_app.instance) == "asgi3"
    assert detect_interface(Asgi3Class) == "asgi3"
    assert detect_interface(asgi_app.App2) == "asgi2"
    assert detect_interface(hello.app) == "wsgi"
    assert detect_interface(hello.HelloClass) == "wsgi"
    assert detect_interface(functools.partial(wsgi_wrapper)) == "wsgi"
    assert detect_interface(functools.wraps(asgi_app.app)(wsgi_wrapper)) == "wsgi"  # wrapped, but sync


@needs_asgi_engine
def test_interface_asgi_forces_asgi(server):
    srv = server("asgi_app:app", "--interface", "asgi")
    assert srv.request()[2] == b"asgi"
    # A WSGI app forced to ASGI is served as ASGI 3 (its requests then fail with a 500, as any app
    # raising before it responds: test_asgi_http covers that); the log says why it was tried.
    srv = server("hello:app", "--interface", "asgi")
    assert "--interface asgi: hello:app does not look like an ASGI application" in srv.output
    assert "(ASGI, " in srv.output


def test_interface_wsgi_forces_wsgi(server):
    srv = server("asgi_app:app", "--interface", "wsgi")
    assert "(WSGI, " in srv.output
    assert srv.request()[0] == 500  # a coroutine function called as WSGI returns no iterable


def test_loop_uvloop_not_installed():
    code = ("import sys; sys.modules['uvloop'] = None  # as if not installed\n"
            "from fulmen.cli import main; sys.exit(main(sys.argv[1:]))\n")
    result = subprocess.run([sys.executable, "-c", code, "--port", "0", "--loop", "uvloop", "asgi_app:app"],
                            capture_output=True, text=True, timeout=30, env=fulmen_env())
    assert_error(result, "--loop uvloop: uvloop is not installed", "--loop asyncio")
    # auto falls back to asyncio (shown in the start-up line) instead of failing.
    if _engine_serves_asgi():
        proc = subprocess.Popen([sys.executable, "-c", code, "--port", "0", "asgi_app:app"], env=fulmen_env(),
                                stderr=subprocess.PIPE, text=True)
        try:
            for line in proc.stderr:
                if "Starting Fulmen" in line:
                    assert "(ASGI, asyncio)" in line, line
                    break
        finally:
            proc.kill()
            proc.wait()


@needs_asgi_engine
@pytest.mark.parametrize("loop", ["asyncio", "uvloop", "auto"])
def test_both_loops_serve(server, loop):
    if loop != "asyncio":
        pytest.importorskip("uvloop")
    srv = server("asgi_app:app", "--loop", loop)
    assert f"(ASGI, {'uvloop' if loop == 'auto' else loop})" in srv.output
    assert srv.request()[2] == b"asgi"
    assert srv.stop() == 0


@needs_asgi_engine
def test_threads_do_not_apply_to_asgi(server):
    srv = server("asgi_app:app", "--threads", "4")
    assert "--threads 4 is ignored: ASGI apps run on the event loop" in srv.output
    assert srv.request()[2] == b"asgi"


# --- binding ------------------------------------------------------------------------------------


def test_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_fulmen("--port", str(port), "hello:app")
    assert_error(result, f"[Errno {98 if sys.platform == 'linux' else ''}", "Address already in use",
                 f"127.0.0.1:{port}", "choose another --port")


def test_bad_host():
    assert_error(run_fulmen("--host", "no-such-host.invalid", "hello:app"), "cannot resolve --host")


def test_host_not_on_this_machine():
    # 192.0.2.0/24 is TEST-NET-1: never assigned to a real interface.
    assert_error(run_fulmen("--host", "192.0.2.1", "--port", "0", "hello:app"), "192.0.2.1", "--host")


@pytest.mark.parametrize("path", ["/nonexistent-fulmen-dir/fulmen.sock", "/proc/fulmen.sock"])
def test_uds_path_that_cannot_be_created(path):
    # Reliable even as root, where directory permissions do not apply.
    assert_error(run_fulmen("--uds", path, "hello:app"), path, "--uds")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_uds_permission_denied(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_error(run_fulmen("--uds", str(locked / "fulmen.sock"), "hello:app"),
                     "Permission denied", "--uds path")
    finally:
        locked.chmod(0o700)


def test_uds_path_that_is_a_regular_file_is_not_replaced(tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("precious")
    assert_error(run_fulmen("--uds", str(path), "hello:app"), "is not a socket", "refusing")
    assert path.read_text() == "precious"


def test_uds_with_a_live_server_is_not_replaced(tmp_path):
    path = str(tmp_path / "live.sock")
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(path)
        live.listen()
        assert_error(run_fulmen("--uds", path, "hello:app"), "another server is listening", path)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_fd_errors(tmp_path):
    assert_error(run_fulmen("--fd", "999", "hello:app"), "--fd 999", "Bad file descriptor")
    r, w = os.pipe()
    try:
        assert_error(run_fulmen("--fd", str(r), "hello:app", pass_fds=(r,)), f"--fd {r} is not a socket")
    finally:
        os.close(r)
        os.close(w)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound but not listening
        fd = s.fileno()
        assert_error(run_fulmen("--fd", str(fd), "hello:app", pass_fds=(fd,)), "is not listening")
    with socket.socket(type=socket.SOCK_DGRAM) as s:
        fd = s.fileno()
        assert_error(run_fulmen("--fd", str(fd), "hello:app", pass_fds=(fd,)), "not a stream")


# --- serving (needs the built engine) -----------------------------------------------------------


def test_port_0_serves_and_logs_the_real_port(server):
    srv = server("hello:app")
    assert srv.port and srv.port != 0
    assert f"Listening on http://127.0.0.1:{srv.port}" in srv.output
    status, headers, body = srv.request("GET", "/")
    assert (status, body) == (200, b"Hello, world!\n")
    assert srv.stop() == 0
    log = srv.output
    assert log.count("Shutting down") == 1 and "Finished" in log
    assert re.search(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[INFO\] Listening on ", log, re.M)


def test_sigint_stops_gracefully(server):
    srv = server("hello:app")
    assert srv.request()[0] == 200
    assert srv.stop(signal.SIGINT) == 0
    assert "Shutting down" in srv.output and "Finished" in srv.output


def test_environ_passed_to_the_app(server):
    srv = server("echo_environ:app", "--root-path", "/mount")
    status, _, body = srv.request("POST", "/mount/path/x?a=1&b=2", body=b"hello body",
                                  headers={"Content-Type": "text/plain", "X-Custom": "yes"})
    assert status == 200
    env = json.loads(body)
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == "/mount" and env["PATH_INFO"] == "/path/x"
    assert env["QUERY_STRING"] == "a=1&b=2"
    assert env["SERVER_NAME"] == "127.0.0.1" and env["SERVER_PORT"] == str(srv.port)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "10"
    assert env["HTTP_X_CUSTOM"] == "yes"
    assert env["wsgi.url_scheme"] == "http" and env["wsgi.version"] == [1, 0]
    assert env["wsgi.multithread"] is False and env["wsgi.multiprocess"] is False
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert env["body"] == "hello body"


def test_threads_make_the_app_multithreaded(server):
    srv = server("echo_environ:app", "--threads", "4")
    assert json.loads(srv.request()[2])["wsgi.multithread"] is True


def test_access_log_on_and_off(server):
    on = server("hello:app")
    on.request("GET", "/logged-path")
    on.stop()
    assert "/logged-path" in on.stdout
    off = server("hello:app", "--no-access-log")
    off.request("GET", "/unlogged-path")
    off.stop()
    assert "/unlogged-path" not in off.stdout


def test_environment_configures_the_server(server):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        # The command line's --port 0 wins over the busy FULMEN_PORT; the rest comes from the env.
        srv = server(None, "--port", "0",
                     env={"FULMEN_PORT": str(busy_port), "FULMEN_APP": "echo_environ:app", "FULMEN_THREADS": "2",
                          "FULMEN_ACCESS_LOG": "false"})
        env = json.loads(srv.request("GET", "/env")[2])
    assert srv.port != busy_port
    assert env["wsgi.multithread"] is True
    srv.stop()
    assert "/env" not in srv.stdout


def test_fulmen_port_from_environment(server):
    port = free_port()
    srv = server("hello:app", env={"FULMEN_PORT": str(port)})
    assert srv.port == port and srv.request()[0] == 200


def test_factory_serves(server):
    srv = server("factory:create_app", "--factory")
    assert srv.request()[2] == b"Hello, world!\n"


def test_dotted_attribute_serves(server):
    srv = server("hello:nested.app")
    assert srv.request()[0] == 200


def test_class_app_serves(server):
    # A PEP 3333 class application is WSGI, not ASGI 2.
    srv = server("hello:HelloClass")
    assert srv.request()[2] == b"Hello from a class\n"


def test_ipv6(server):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    srv = server("echo_environ:app", "--host", "::1")
    assert srv.url == f"http://[::1]:{srv.port}"
    env = json.loads(srv.request()[2])
    assert env["SERVER_NAME"] == "::1" and env["REMOTE_ADDR"] == "::1"


def test_limit_request_body(server):
    srv = server("echo_environ:app", "--limit-request-body", "4")
    assert srv.request("POST", "/", body=b"12345")[0] == 413
    assert srv.request("POST", "/", body=b"1234")[0] == 200


def test_uds_serves_and_cleans_up(server, tmp_path):
    path = tmp_path / "fulmen.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a socket file nobody accepts on: left by a crashed server
    stale.close()
    srv = server("echo_environ:app", "--uds", str(path))
    assert srv.uds == str(path) and f"Listening on unix:{path}" in srv.output
    status, _, body = srv.request("GET", "/over-uds")
    assert status == 200 and json.loads(body)["PATH_INFO"] == "/over-uds"
    assert srv.stop() == 0
    assert not path.exists()


def test_fd_serves(server):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        fd = listener.fileno()
        srv = server("echo_environ:app", "--fd", str(fd), pass_fds=(fd,))
    assert f"Listening on fd://{fd}" in srv.output and srv.port == port
    env = json.loads(srv.request("GET", "/via-fd")[2])
    assert env["PATH_INFO"] == "/via-fd" and env["SERVER_PORT"] == str(port)
    assert srv.stop() == 0


def test_run_api_serves(server, tmp_path):
    # fulmen.run() in a script: the same server, configured by keyword arguments.
    script = tmp_path / "serve.py"
    script.write_text("import sys, fulmen\n"
                      f"sys.path.insert(0, {str(APPS)!r})\n"
                      "from hello import app\n"
                      "fulmen.run(app, port=0, threads=2, access_log=False)\n")
    srv = server(command=[sys.executable, str(script)])
    assert srv.request()[2] == b"Hello, world!\n"
    assert srv.stop() == 0
    assert "Finished" in srv.output and srv.stdout == ""
