"""Logging end to end: --access-log-format (Gunicorn's atoms and json), --access-logfile and
--error-logfile with SIGUSR1 reopening after a rename, and --log-config files.

Servers that log to files get a socket bound here (--fd), so they are ready as soon as the first
request is answered (the kernel queues the connection until the engine accepts it); nothing waits
on a fixed sleep.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import fulmen_env, run_fulmen
from rawhttp import exchange, wait_until
from wsclient import TEXT, open_ws

APPS = {"wsgi": "logged:wsgi", "asgi": "logged:asgi"}
COMBINED = re.compile(r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
                      r'"GET /p\?q=1 HTTP/1\.1" 200 7 "http://ref/" "agent/1"$')


def access_lines(srv) -> list[str]:
    return [line for line in srv.stdout.splitlines() if line]


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_default_format_is_gunicorns_combined(server, kind):
    srv = server(APPS[kind])
    srv.request("GET", "/p?q=1", headers={"Referer": "http://ref/", "User-Agent": "agent/1"})
    srv.stop()
    lines = access_lines(srv)
    assert len(lines) == 1 and COMBINED.match(lines[0]), srv.stdout


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_every_atom(server, kind):
    fmt = "|".join(f"%({a})s" for a in "h l u t r m U q H s B b f a T D M L p".split())
    fmt += "|%({x-in}i)s|%({X-Trace}o)s|%({x-missing}o)s|%({REMOTE_PORT}e)s|%%"
    srv = server(APPS[kind], "--access-log-format", fmt)
    srv.request("POST", "/some/path?a=1&b=2", body=b"abc",
                headers={"Referer": "http://r/", "User-Agent": "ua/2", "X-In": "in-value",
                         "Authorization": "Basic dXNlcjE6c2VjcmV0"})  # user1:secret
    srv.stop()
    (line,) = access_lines(srv)
    f = line.split("|")
    assert f[:3] == ["127.0.0.1", "-", "user1"], line
    assert re.fullmatch(r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\]", f[3]), line
    assert f[4:14] == ["POST /some/path?a=1&b=2 HTTP/1.1", "POST", "/some/path", "a=1&b=2", "HTTP/1.1",
                       "200", "7", "7", "http://r/", "ua/2"], line
    seconds, micros, millis, decimal = int(f[14]), int(f[15]), int(f[16]), f[17]
    assert 0 <= micros < 10_000_000, line  # measured, and in microseconds
    assert seconds == micros // 1_000_000 and millis == micros // 1000, line
    assert decimal == f"{micros // 1_000_000}.{micros % 1_000_000:06d}", line
    assert f[18] == f"<{srv.proc.pid}>", line
    assert f[19:22] == ["in-value", f"trace-{kind}", "-"], line
    assert 0 < int(f[22]) < 65536 and f[23] == "%", line


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_json_lines(server, kind):
    srv = server(APPS[kind], "--access-log-format", "json")
    srv.request("GET", "/j?x=%22y", headers={"User-Agent": 'quote " and \\ back'})
    # A header byte that is not UTF-8 (obs-text is legal in a field value): replaced, not passed on.
    resp = exchange(srv.port, b"GET /raw HTTP/1.1\r\nHost: t\r\nUser-Agent: caf\xe9\tz\r\n"
                                b"Connection: close\r\n\r\n")
    assert resp.status == 200
    srv.stop()
    lines = access_lines(srv)
    assert len(lines) == 2, srv.stdout
    first, second = (json.loads(line) for line in lines)
    assert set(first) == {"time", "remote_addr", "remote_port", "method", "path", "query", "protocol", "status",
                          "bytes", "duration_us", "referer", "user_agent", "user", "pid"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", first["time"]), first
    assert first["remote_addr"] == "127.0.0.1" and isinstance(first["remote_port"], int)
    assert (first["method"], first["path"], first["query"], first["protocol"]) == ("GET", "/j", "x=%22y", "HTTP/1.1")
    assert (first["status"], first["bytes"], first["referer"], first["user"]) == (200, 7, None, None)
    assert first["user_agent"] == 'quote " and \\ back'
    assert first["pid"] == srv.proc.pid and 0 <= first["duration_us"] < 10_000_000
    assert second["path"] == "/raw" and second["user_agent"] == "caf\ufffd\tz", second


def test_websocket_is_logged_at_its_101(server):
    srv = server("asgi_ws:app", "--access-log-format", "%(r)s %(s)s %(B)s %({x-accepted}o)s %({x-missing}o)s")
    with open_ws(srv.port, "/echo?header=X-Accepted:yes") as ws:
        ws.send_text("hi")
        assert ws.recv_message() == (TEXT, b"hi")
        assert wait_until(lambda: "/echo" in srv.stdout), srv.stdout  # logged once the 101 went out
        ws.close(1000)
    srv.stop()
    assert access_lines(srv) == ["GET /echo?header=X-Accepted:yes HTTP/1.1 101 0 yes -"], srv.stdout


@pytest.mark.parametrize("args, env, expected", [
    (["--access-log-format", "%(x)s"], {}, "invalid --access-log-format %(x)s: unknown atom %(x)s"),
    (["--access-log-format", "50% off"], {}, "invalid --access-log-format 50% off: lone '%'"),
    ([], {"FULMEN_ACCESS_LOG_FORMAT": "%(h)"}, "invalid FULMEN_ACCESS_LOG_FORMAT=%(h): %(h) must be followed by s"),
    (["--access-log-format", "%({wsgi.input}e)s"], {}, "the access log is written by the engine"),
])
def test_bad_access_log_format_is_one_line_error(args, env, expected):
    result = run_fulmen(*args, "hello:app", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr, result.stderr


def test_run_api_validates_the_format():
    from fulmen import config

    with pytest.raises(ValueError, match="unknown atom"):
        config.from_kwargs({"access_log_format": "%(zz)s"})
    assert config.from_kwargs({"access_log_format": "json"})["access_log_format"] == "json"


# --- log files and SIGUSR1 ------------------------------------------------------------------------


class FdServer:
    """fulmen on a socket bound here, with its output to files or pipes we do not depend on."""

    def __init__(self, args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stdout = open(tmp_path / "stdout.txt", "w+")
        self.stderr = open(tmp_path / "stderr.txt", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "fulmen", "--fd", str(self.sock.fileno()), *args],
                                     env=fulmen_env(env), stdout=self.stdout, stderr=self.stderr,
                                     pass_fds=(self.sock.fileno(),))

    def get(self, path: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def output(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        self.sock.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.sock.close()


@pytest.fixture
def fd_server(tmp_path):
    started: list[FdServer] = []

    def start(*args: str, env: dict[str, str] | None = None) -> FdServer:
        srv = FdServer(list(args), tmp_path, env)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.kill()


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


@pytest.mark.parametrize("args", [["logged:wsgi"], ["logged:wsgi", "--threads", "3"], ["logged:asgi"],
                                  ["logged:wsgi", "--workers", "2"], ["logged:asgi", "--workers", "2"]],
                         ids=["wsgi", "wsgi-threads", "asgi", "wsgi-workers", "asgi-workers"])
def test_log_files_are_reopened_on_usr1_after_a_rename(fd_server, tmp_path, args):
    access, error = tmp_path / "access.log", tmp_path / "error.log"
    srv = fd_server("--access-logfile", str(access), "--error-logfile", str(error), *args)
    assert srv.get("/before") == 200
    assert wait_until(lambda: "/before" in read(access)), read(access)
    assert "Listening on" in read(error)
    os.rename(access, tmp_path / "access.log.1")
    os.rename(error, tmp_path / "error.log.1")
    assert srv.get("/between") == 200  # still written to the renamed file, as logrotate expects
    assert wait_until(lambda: "/between" in read(tmp_path / "access.log.1"))
    srv.proc.send_signal(signal.SIGUSR1)
    # Under --workers the supervisor reopens its files and forwards the signal; each worker then
    # reopens its own: one line from every process.
    processes = 3 if "--workers" in args else 1
    assert wait_until(lambda: read(error).count("Reopened the log files") >= processes), \
        srv.output() + read(error) + read(tmp_path / "error.log.1")
    assert srv.get("/after") == 200
    assert wait_until(lambda: "/after" in read(access)), read(access)
    assert srv.stop() == 0
    old, new = read(tmp_path / "access.log.1"), read(access)
    assert "/before" in old and "/between" in old and "/after" not in old
    assert "/before" not in new and new.count("\n") == 1
    if "--workers" not in args:
        assert "Finished" in read(error) and "Finished" not in read(tmp_path / "error.log.1")
    else:  # the workers' own lines after the reopen went to the new file too
        assert "stopped (shutdown" in read(error) and "stopped" not in read(tmp_path / "error.log.1")
    # Fulmen's own lines went to the files (the app's own logger is the app's business: Python's
    # last-resort handler sends its warnings to stderr).
    assert "fulmen" not in srv.output().lower() and "Listening" not in srv.output(), srv.output()
    assert os.path.getsize(srv.stdout.name) == 0


def test_usr1_reaches_a_worker_that_was_booting(fd_server, tmp_path):
    # A worker still importing the app when USR1 comes may not have its handler yet: the
    # supervisor sends it the signal once the worker reports ready.
    access, error, slow = tmp_path / "access.log", tmp_path / "error.log", tmp_path / "slow"
    srv = fd_server("--access-logfile", str(access), "--error-logfile", str(error), "--workers", "1",
                    "logged:wsgi", env={"LOGGED_SLOW_IMPORT": str(slow)})
    assert wait_until(lambda: "Ready: 1 worker serving" in read(error)), read(error)
    slow.touch()
    srv.proc.send_signal(signal.SIGTTIN)  # a second worker, 2 s to boot
    assert wait_until(lambda: read(error).count("Started worker") == 2), read(error)
    booting = int(re.findall(r"Started worker (\d+)", read(error))[-1])
    os.rename(error, tmp_path / "error.log.1")
    srv.proc.send_signal(signal.SIGUSR1)
    assert wait_until(lambda: "SIGUSR1: forwarded to 1 worker (1 more once ready)" in read(error)), \
        read(error) + read(tmp_path / "error.log.1")
    assert wait_until(lambda: f"[{booting}] [INFO] Reopened the log files" in read(error), timeout=15), \
        read(error) + read(tmp_path / "error.log.1")
    text = read(error)
    assert text.index(f"Worker {booting} ready") < text.index(f"[{booting}] [INFO] Reopened"), text
    assert read(error).count("Reopened the log files") == 3, text  # supervisor and both workers
    assert srv.stop() == 0


def test_log_files_append_and_dash_means_the_standard_streams(fd_server, tmp_path):
    access = tmp_path / "access.log"
    access.write_text("kept line\n")
    srv = fd_server("--access-logfile", str(access), "--error-logfile", "-", "logged:wsgi")
    assert srv.get("/appended") == 200
    assert wait_until(lambda: "/appended" in read(access))
    assert srv.stop() == 0
    assert read(access).startswith("kept line\n")
    assert "Listening on" in srv.output()


@pytest.mark.parametrize("option", ["--access-logfile", "--error-logfile"])
def test_log_file_that_cannot_be_opened(tmp_path, option):
    result = run_fulmen(option, str(tmp_path / "missing-dir" / "x.log"), "hello:app")
    assert result.returncode == 1
    assert f"Error: cannot open {option} " in result.stderr and "No such file or directory" in result.stderr


# --- --log-config ---------------------------------------------------------------------------------


def dict_config(logfile: Path, level: str = "INFO") -> dict:
    return {
        "version": 1,
        "formatters": {"plain": {"format": "CUSTOM %(name)s %(levelname)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(logfile), "formatter": "plain"}},
        "loggers": {"fulmen.error": {"handlers": ["file"], "level": level, "propagate": False},
                    "logged.app": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_log_config_json(fd_server, tmp_path, kind):
    logfile, conf = tmp_path / "out.log", tmp_path / "logging.json"
    conf.write_text(json.dumps(dict_config(logfile)))
    srv = fd_server("--log-config", str(conf), APPS[kind])
    assert srv.get("/configured") == 200
    assert wait_until(lambda: "app saw /configured" in read(logfile)), read(logfile)
    assert srv.stop() == 0
    text = read(logfile)
    assert "CUSTOM fulmen.error INFO Listening on" in text
    assert "CUSTOM logged.app WARNING app saw /configured" in text
    assert "CUSTOM fulmen.error INFO Finished" in text


def test_log_config_level_from_file_unless_log_level_is_given(fd_server, tmp_path):
    logfile, conf = tmp_path / "out.log", tmp_path / "logging.json"
    conf.write_text(json.dumps(dict_config(logfile, level="WARNING")))
    srv = fd_server("--log-config", str(conf), "logged:wsgi")
    assert srv.get("/quiet") == 200
    assert wait_until(lambda: "app saw /quiet" in read(logfile))
    assert srv.stop() == 0
    assert "Listening on" not in read(logfile)  # the file's WARNING level held
    logfile.unlink()
    srv = fd_server("--log-config", str(conf), "--log-level", "info", "logged:wsgi")
    assert srv.get("/loud") == 200
    assert wait_until(lambda: "app saw /loud" in read(logfile))
    assert srv.stop() == 0
    assert "CUSTOM fulmen.error INFO Listening on" in read(logfile)


def test_log_config_yaml(fd_server, tmp_path):
    yaml = pytest.importorskip("yaml")
    logfile, conf = tmp_path / "out.log", tmp_path / "logging.yaml"
    conf.write_text(yaml.safe_dump(dict_config(logfile)))
    srv = fd_server("--log-config", str(conf), "logged:wsgi")
    assert srv.get("/yaml") == 200
    assert wait_until(lambda: "app saw /yaml" in read(logfile))
    assert srv.stop() == 0
    assert "CUSTOM fulmen.error INFO Listening on" in read(logfile)


def test_log_config_ini(fd_server, tmp_path):
    logfile, conf = tmp_path / "out.log", tmp_path / "logging.ini"
    conf.write_text(f"""
[loggers]
keys=root,fulmen

[handlers]
keys=file

[formatters]
keys=plain

[logger_root]
level=WARNING
handlers=file

[logger_fulmen]
level=INFO
handlers=file
qualname=fulmen.error
propagate=0

[handler_file]
class=FileHandler
formatter=plain
args=({str(logfile)!r}, 'a')

[formatter_plain]
format=INI %(name)s %(message)s
""")
    srv = fd_server("--log-config", str(conf), "logged:wsgi")
    assert srv.get("/ini") == 200
    assert wait_until(lambda: "INI logged.app app saw /ini" in read(logfile)), read(logfile)
    assert srv.stop() == 0
    assert "INI fulmen.error Listening on" in read(logfile)


def test_log_config_yaml_without_pyyaml(tmp_path):
    (tmp_path / "yaml").mkdir()
    (tmp_path / "yaml" / "__init__.py").write_text("raise ImportError('PyYAML is not installed')\n")
    conf = tmp_path / "logging.yml"
    conf.write_text("version: 1\n")
    result = run_fulmen("--log-config", str(conf), "hello:app", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr == f"Error: --log-config {conf}: reading YAML needs PyYAML (pip install PyYAML); " \
                            "or write the configuration as .json\n"


@pytest.mark.parametrize("name, text, expected", [
    ("bad.json", "{not json", "invalid logging configuration: JSONDecodeError"),
    ("bad.json", '{"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}', "invalid logging configuration"),
    ("bad.json", "[1, 2]", "expected a dictConfig mapping"),
    ("bad.ini", "[loggers]\nkeys=root\n", "invalid logging configuration"),
    ("missing.ini", None, "no such file"),
    ("missing.json", None, "No such file or directory"),
])
def test_bad_log_config(tmp_path, name, text, expected):
    conf = tmp_path / name
    if text is not None:
        conf.write_text(text)
    result = run_fulmen("--log-config", str(conf), "hello:app")
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: --log-config {conf}: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr, result.stderr
