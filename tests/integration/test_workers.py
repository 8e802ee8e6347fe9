"""--workers: the supervisor, its signals, and zero lost requests across reloads and worker stops.

The load tests run a Python load client (threads with keep-alive http.client connections) while
the supervisor reloads or loses workers, and count every failed request and every reset; the
acceptance test of issue 5 is that a reload or a graceful worker stop loses none.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import sys
import threading
import time

import pytest

from conftest import LISTENING, Server, run_fulmen

READY = re.compile(r"Ready: (\d+) workers? serving")
APP = "workers_app:app"
ASGI_APP = "workers_app:asgi_app"


def wait_until(condition, timeout: float = 20.0, what="condition") -> None:
    """Polls `condition` until it holds; `what` (a string, or a callable for text computed at the
    time of failure) says what was awaited."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.02)


class Supervised(Server):
    """A `fulmen --workers` process; ready once every worker is (the "Ready:" line)."""

    def __init__(self, args: list[str], env=None) -> None:
        super().__init__([sys.executable, "-m", "fulmen", *args], env, ready=READY)
        m = LISTENING.search(self.output)
        if m is None:
            self.kill()
            raise AssertionError(f"no Listening line:\n{self.output}")
        self.address = m.group(1)
        if self.address.startswith("unix:"):
            self.uds = self.address[len("unix:"):]
        else:
            self.port = int(m.group(1).rsplit(":", 1)[1])
            self.url = f"http://127.0.0.1:{self.port}"

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.output))

    def wait_count(self, pattern: str, n: int, timeout: float = 20.0) -> None:
        wait_until(lambda: self.count(pattern) >= n, timeout, lambda: f"{n} x {pattern!r} in:\n{self.output}")

    def worker_pids(self) -> set[int]:
        """The workers running now, from the supervisor's log."""
        started = {int(p) for p in re.findall(r"Started worker (\d+)", self.output)}
        gone = {int(p) for p in re.findall(r"Worker (\d+) (?:stopped|died|exited|failed)", self.output)}
        return started - gone

    def get(self, path: str = "/", timeout: float = 10) -> tuple[int, str]:
        status, _, body = self.request("GET", path, timeout=timeout)
        return status, body.decode()


@pytest.fixture
def supervised():
    started: list[Supervised] = []

    def start(*args: str, app: str = APP, env=None) -> Supervised:
        if not any(a.startswith(("--uds", "--fd", "--port")) for a in args):
            args = ("--port", "0", *args)
        srv = Supervised([*args, app], env)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        pids = srv.worker_pids()
        srv.kill()
        for pid in pids:  # the workers stop with their supervisor (PDEATHSIG); make sure
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Load:
    """`clients` threads, each sending GET / in a loop on one keep-alive connection (reconnecting
    only when the server says Connection: close). Every exception and non-200 is a failure.

    Half the clients pause `think` seconds between requests, as a browser does: their connections
    are idle most of the time, so a stop finds idle connections whose client is about to send (a
    server that closed them then would fail those requests); the other half keep the workers busy."""

    def __init__(self, port: int, clients: int = 6, think: float = 0.02) -> None:
        self.think = think
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.pids: set[str] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i % 2 == 1,), daemon=True)
                        for i in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self, pausing: bool) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stopping.is_set():
            if pausing and self.stopping.wait(self.think):
                break
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                body = resp.read().decode()
                with self.lock:
                    if resp.status == 200 and body.startswith("ok "):
                        self.ok += 1
                        self.pids.add(body[3:])
                    else:
                        self.failures.append(f"status {resp.status}: {body!r}")
            except Exception as exc:  # ECONNRESET, EOF (RemoteDisconnected), refused, timeout...
                with self.lock:
                    self.failures.append(repr(exc))
                conn.close()
        conn.close()

    def wait_more(self, n: int, timeout: float = 20.0) -> None:
        target = self.ok + n
        wait_until(lambda: self.ok >= target or self.failures, timeout, f"{n} more responses")

    def finish(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(15)


# ---- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["--workers", "many"], {}, ["--workers many", 'an integer or "auto"']),
        (["--workers", "-1"], {}, ["--workers -1", "at least 0"]),
        ([], {"FULMEN_WORKERS": "1.5"}, ["FULMEN_WORKERS=1.5", "integer"]),
        (["--timeout", "-1"], {}, ["--timeout -1", "at least 0"]),
        (["--max-requests", "-5", "--workers", "1"], {}, ["--max-requests -5", "at least 0"]),
        (["--max-requests-jitter", "x", "--workers", "1"], {}, ["--max-requests-jitter x", "integer"]),
        (["--max-rss", "-1", "--workers", "1"], {}, ["--max-rss -1", "at least 0"]),
        (["--max-requests", "100"], {}, ["--max-requests needs a supervisor", "--workers"]),
        (["--max-rss", "100"], {}, ["--max-rss needs a supervisor"]),
        (["--preload"], {}, ["--preload needs a supervisor"]),
        ([], {"FULMEN_MAX_REQUESTS": "10"}, ["--max-requests needs a supervisor"]),
    ],
)
def test_invalid_worker_options(args, env, expected):
    result = run_fulmen("hello:app", *args, env=env)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: "), result.stderr
    for text in expected:
        assert text in last, (text, last)


def test_workers_auto_is_one_per_cpu(supervised):
    srv = supervised(env={"FULMEN_WORKERS": "auto"})
    n = len(os.sched_getaffinity(0))  # the CPUs this process may use (a container's, not the host's)
    assert f"Ready: {n} worker" in srv.output
    assert len(srv.worker_pids()) == n


def test_workers_share_the_load(supervised):
    srv = supervised("--workers", "2")
    assert len(srv.worker_pids()) == 2
    # Each connection goes to whichever worker is idle; both answer sooner or later.
    seen: set[str] = set()
    deadline = time.monotonic() + 20
    while len(seen) < 2 and time.monotonic() < deadline:
        conns = [http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10) for _ in range(4)]
        for c in conns:
            c.request("GET", "/sleep?s=0.2")
        for c in conns:
            seen.add(c.getresponse().read().decode())
            c.close()
    assert {f"ok {p}" for p in srv.worker_pids()} == seen


def test_workers_on_a_unix_socket(tmp_path, supervised):
    path = str(tmp_path / "app.sock")
    srv = supervised("--uds", path, "--workers", "2")
    assert srv.get()[0] == 200
    os.kill(srv.proc.pid, signal.SIGHUP)
    srv.wait_count(r"stopped \(reload", 2)
    assert os.path.exists(path)  # a worker that stops leaves the supervisor's socket file alone
    assert srv.get()[0] == 200
    assert srv.stop() == 0
    assert not os.path.exists(path)


def test_wsgi_multiprocess_is_true_under_workers(supervised):
    srv = supervised("--workers", "1", app="echo_environ:app")
    status, body = srv.get("/")
    assert status == 200
    assert json.loads(body)["wsgi.multiprocess"] is True


def test_run_with_workers_from_python(tmp_path, supervised):
    script = tmp_path / "serve.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(os.path.dirname(__file__) + '/apps')!r})\n"
        "import fulmen, workers_app\n"
        "fulmen.run(workers_app.app, port=0, workers=2)\n")
    srv = Server([sys.executable, str(script)], None, ready=READY)
    try:
        port = int(LISTENING.search(srv.output).group(1).rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().read().startswith(b"ok ")
        conn.close()
        assert srv.stop(signal.SIGTERM) == 0
    finally:
        srv.kill()


# ---- boot failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec, code, shown", [
    ("raises_on_import:app", 1, "RuntimeError: boom while importing"),
    ("no_such_module_here:app", 1, "no_such_module_here"),
])
def test_worker_that_cannot_boot_stops_the_supervisor(spec, code, shown):
    started = time.monotonic()
    result = run_fulmen("--port", "0", "--workers", "2", spec, timeout=60)
    assert result.returncode == code, result.stderr
    assert shown in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: a worker failed to boot")
    # Not a restart loop: one failure per worker at most.
    assert result.stderr.count("Started worker") <= 2, result.stderr
    assert time.monotonic() - started < 30


def test_replacement_that_cannot_boot_while_others_serve_is_retried(tmp_path, supervised):
    """A worker that dies is replaced by one that cannot boot (here: its module now refuses to
    import; in life, a database its startup needs is down): the others keep serving, and the
    supervisor tries again, later each time, until one boots."""
    marker = tmp_path / "broken"
    (tmp_path / "flaky_boot_app.py").write_text(
        "import os\n"
        f"if os.path.exists({str(marker)!r}):\n"
        "    raise RuntimeError('cannot start right now')\n"
        "from workers_app import app\n")
    env = {"PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    srv = supervised("--workers", "2", app="flaky_boot_app:app", env=env)
    marker.write_text("")
    victim = min(srv.worker_pids())
    os.kill(victim, signal.SIGKILL)
    srv.wait_count(r"failed to boot .*: 1 worker keeps serving; trying again in 1s", 1)
    srv.wait_count(r"trying again in 2s", 1)  # the second try failed too, and waited longer
    assert srv.proc.poll() is None
    status, body = srv.get("/")
    assert status == 200 and body.startswith("ok ")
    marker.unlink()
    srv.wait_count(r"Worker \d+ ready", 3, timeout=30)  # two at the start, then the retry
    assert len(srv.worker_pids()) == 2


def test_workers_do_not_leave_signals_ignored_for_the_apps_children(supervised):
    # SIG_IGN survives exec: a worker that ignored SIGINT/SIGHUP that way would pass it on to
    # every process the app starts. It catches them with a handler instead.
    srv = supervised("--workers", "1")
    pid = next(iter(srv.worker_pids()))
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    ignored, caught = int(status["SigIgn"], 16), int(status["SigCgt"], 16)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        assert not ignored & (1 << (sig - 1)), f"{sig.name} is SIG_IGN in the worker"
        assert caught & (1 << (sig - 1)), f"{sig.name} has no handler in the worker"


def test_lifespan_startup_failure_in_a_worker_exits_3():
    result = run_fulmen("--port", "0", "--workers", "1", "--lifespan", "on", "lifespan_app:failing",
                        timeout=60)
    assert result.returncode == 3, result.stderr
    assert "a worker failed to boot" in result.stderr
    assert result.stderr.count("Started worker") == 1, result.stderr


# ---- signals -----------------------------------------------------------------------------------


def test_ttin_and_ttou_change_the_number_of_workers(supervised):
    srv = supervised("--workers", "1")
    os.kill(srv.proc.pid, signal.SIGTTIN)
    srv.wait_count(r"Ready: 2 workers serving", 1)
    assert len(srv.worker_pids()) == 2
    os.kill(srv.proc.pid, signal.SIGTTOU)
    srv.wait_count(r"stopped \(fewer workers", 1)
    assert len(srv.worker_pids()) == 1
    os.kill(srv.proc.pid, signal.SIGTTOU)  # never below one
    srv.wait_count(r"SIGTTOU: 1 worker\b", 2)
    assert srv.get()[0] == 200
    assert len(srv.worker_pids()) == 1


def test_term_lets_in_flight_requests_finish(supervised):
    srv = supervised("--workers", "2")
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
    conn.request("GET", "/sleep?s=1.5")
    # Whether the worker has read the request yet or not, a graceful stop must answer it.
    os.kill(srv.proc.pid, signal.SIGTERM)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read().startswith(b"ok ")
    assert resp.getheader("Connection") == "close"
    assert srv.proc.wait(20) == 0
    assert "Finished" in srv.output


@pytest.mark.parametrize("app", [APP, ASGI_APP])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_whole_group_is_one_graceful_stop(supervised, app, sig):
    """Ctrl-C in a terminal, or systemd's default KillMode, signals the supervisor and every
    worker at once; the supervisor relays the stop too. A worker must not take the two as "stop
    now": the request in flight completes."""
    srv = supervised("--workers", "2", app=app)
    pids = srv.worker_pids()
    before = {pid: _sockets(pid) for pid in pids}
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
    conn.request("GET", "/sleep?s=1.5")
    wait_until(lambda: any(_sockets(p) > before[p] for p in pids), 10, "a worker to take the connection")
    os.kill(srv.proc.pid, sig)
    for pid in pids:
        os.kill(pid, sig)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read().startswith(b"ok ")
    assert srv.proc.wait(20) == 0
    assert "Stopping now" not in srv.output


def _sockets(pid: int) -> int:
    """How many sockets process `pid` has open (from /proc)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # closed meanwhile
            pass
    return n


def test_quit_stops_now(supervised):
    srv = supervised("--workers", "1", "--graceful-timeout", "30")
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
    conn.request("GET", "/sleep?s=10")
    srv.wait_for_log(r"Worker \d+ ready")
    started = time.monotonic()
    os.kill(srv.proc.pid, signal.SIGQUIT)
    assert srv.proc.wait(15) == 0
    assert time.monotonic() - started < 10  # not the 10 s of the request, nor the graceful timeout
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.getresponse()


def test_second_term_stops_now(supervised):
    srv = supervised("--workers", "1", "--graceful-timeout", "30")
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
    conn.request("GET", "/sleep?s=10")
    os.kill(srv.proc.pid, signal.SIGTERM)
    srv.wait_count(r"Shutting down \(SIGTERM\)", 2)  # the supervisor's line and the worker's
    started = time.monotonic()
    os.kill(srv.proc.pid, signal.SIGTERM)
    assert srv.proc.wait(15) == 0
    assert time.monotonic() - started < 8
    conn.close()


def _pending(pid: int, sig: int) -> bool:
    """Whether `sig` is still pending for process `pid` (not yet delivered)."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    mask = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return bool(mask & (1 << (sig - 1)))


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("app", [APP, ASGI_APP])
def test_usr1_does_not_kill_workers(supervised, app):
    srv = supervised("--workers", "2", app=app)
    pids = srv.worker_pids()
    os.kill(srv.proc.pid, signal.SIGUSR1)
    srv.wait_count(r"SIGUSR1: forwarded to 2 workers", 1)
    for pid in pids:  # also sent straight to a worker
        os.kill(pid, signal.SIGUSR1)
    # Once delivered, a signal whose default action were taken would have ended the process.
    wait_until(lambda: not any(_running(p) and _pending(p, signal.SIGUSR1) for p in pids), 10,
               "USR1 delivered")
    assert all(_running(p) for p in pids)
    assert srv.get()[0] == 200
    assert srv.worker_pids() == pids
    assert "died" not in srv.output


def test_hup_reimports_the_app_and_preload_does_not(tmp_path, supervised):
    (tmp_path / "workers_version.py").write_text("VERSION = 'one'\n")
    env = {"PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    plain = supervised("--workers", "1", env=env)
    preloaded = supervised("--workers", "1", "--preload", env=env)
    assert plain.get("/version") == (200, "one")
    assert preloaded.get("/version") == (200, "one")
    (tmp_path / "workers_version.py").write_text("VERSION = 'two'\n")
    for srv in (plain, preloaded):
        os.kill(srv.proc.pid, signal.SIGHUP)
        srv.wait_count(r"stopped \(reload", 1)
    assert plain.get("/version") == (200, "two")
    assert preloaded.get("/version") == (200, "one")


def test_hup_with_broken_code_keeps_the_old_workers(tmp_path, supervised):
    (tmp_path / "workers_version.py").write_text("VERSION = 'one'\n")
    env = {"PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    (tmp_path / "workers_version_app.py").write_text("from workers_app import app\n")
    srv = supervised("--workers", "2", app="workers_version_app:app", env=dict(env))
    (tmp_path / "workers_version_app.py").write_text("raise RuntimeError('broken on purpose')\n")
    os.kill(srv.proc.pid, signal.SIGHUP)
    srv.wait_count(r"reload failed, the running workers keep serving", 1)
    srv.wait_count(r"stopped \(reload failed", 1)  # the other new worker, told to stop
    assert srv.proc.poll() is None
    assert srv.get("/version") == (200, "one")
    assert len(srv.worker_pids()) == 2


# ---- zero lost requests --------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("app", [APP, ASGI_APP])
def test_ten_reloads_under_load_lose_nothing(supervised, app):
    srv = supervised("--workers", "2", "--no-access-log", app=app)
    first = srv.worker_pids()
    load = Load(srv.port)
    try:
        load.wait_more(50)
        for i in range(1, 11):
            os.kill(srv.proc.pid, signal.SIGHUP)
            srv.wait_count(r"stopped \(reload", 2 * i, timeout=30)
            load.wait_more(30)  # the new workers serve
    finally:
        load.finish()
    assert load.failures == [], (load.failures[:10], srv.output[-3000:])
    assert srv.count(r"Reloading \(SIGHUP\)") == 10
    assert not first & srv.worker_pids()  # every worker was replaced
    assert len(load.pids) >= 11  # each generation served (the old one was gone by then)
    assert "died" not in srv.output


def test_rolling_term_of_workers_under_load_loses_nothing(supervised):
    srv = supervised("--workers", "2", "--no-access-log")
    load = Load(srv.port)
    try:
        load.wait_more(50)
        for i in range(1, 7):
            victim = min(srv.worker_pids())
            os.kill(victim, signal.SIGTERM)
            srv.wait_count(r"Worker \d+ exited \(exit code 0, stopped by someone else\)", i)
            srv.wait_count(r"Worker \d+ ready", 2 + i)
            load.wait_more(30)
    finally:
        load.finish()
    assert load.failures == [], (load.failures[:10], srv.output[-3000:])
    assert len(srv.worker_pids()) == 2


def test_killed_worker_is_replaced_and_serving_goes_on(supervised):
    srv = supervised("--workers", "2", "--no-access-log")
    load = Load(srv.port)
    try:
        load.wait_more(50)
        victim = min(srv.worker_pids())
        os.kill(victim, signal.SIGKILL)
        srv.wait_count(rf"Worker {victim} died \(killed by signal SIGKILL\); starting a new one", 1)
        srv.wait_count(r"Worker \d+ ready", 3)
    finally:
        load.finish()  # its requests cut off by the kill failed, as they must
    assert victim not in srv.worker_pids() and len(srv.worker_pids()) == 2
    # From now on none may fail.
    after = Load(srv.port)
    try:
        after.wait_more(200)
    finally:
        after.finish()
    assert after.failures == [], after.failures[:10]
    assert after.pids <= {str(p) for p in srv.worker_pids()}  # the two live workers answered


# ---- --timeout, --max-requests, --max-rss --------------------------------------------------------


@pytest.mark.parametrize("app", [APP, ASGI_APP])
def test_stuck_worker_is_killed_with_its_stack_logged(supervised, app):
    srv = supervised("--workers", "1", "--timeout", "2", app=app)
    stuck = next(iter(srv.worker_pids()))
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request("GET", "/spin")
    srv.wait_count(rf"Worker {stuck} timed out", 1, timeout=30)
    srv.wait_count(rf"Worker {stuck} stopped \(timeout; killed by signal SIGKILL\)", 1)
    assert "spin_forever" in srv.output  # the worker's stack, from faulthandler
    srv.wait_count(r"Worker \d+ ready", 2)
    status, body = srv.get("/")
    assert status == 200 and body != f"ok {stuck}"
    conn.close()


def test_idle_worker_is_not_timed_out(supervised):
    srv = supervised("--workers", "1", "--timeout", "4")
    pids = srv.worker_pids()
    # Beats come from the loop's timer, not from requests: an idle worker outlives --timeout.
    t0 = time.monotonic()
    wait_until(lambda: time.monotonic() - t0 > 5 or "timed out" in srv.output, 12)
    assert "timed out" not in srv.output
    assert srv.worker_pids() == pids


def test_max_requests_recycles_workers_without_failures(supervised):
    srv = supervised("--workers", "1", "--max-requests", "50", "--max-requests-jitter", "10",
                     "--no-access-log")
    load = Load(srv.port, clients=3)
    try:
        wait_until(lambda: srv.count(r"stopped \(replaced") >= 3 or load.failures, 60, "3 recycles")
        load.wait_more(20)
    finally:
        load.finish()
    assert load.failures == [], (load.failures[:10], srv.output[-3000:])
    assert srv.count(r"served its --max-requests") >= 3
    assert len(load.pids) >= 4


def test_max_rss_recycles_a_growing_worker(supervised):
    # The limit is set above what a worker uses at rest here (more under ASan than without).
    probe = supervised("--workers", "1")
    with open(f"/proc/{next(iter(probe.worker_pids()))}/statm") as f:
        rest = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    probe.stop()
    limit = rest + 64
    srv = supervised("--workers", "1", "--max-rss", str(limit))
    first = next(iter(srv.worker_pids()))
    assert srv.get("/")[0] == 200
    assert srv.get("/grow?mb=128")[0] == 200
    srv.wait_count(rf"Worker {first} uses \d+ MiB, more than --max-rss {limit}", 1)
    srv.wait_count(rf"Worker {first} stopped \(replaced", 1)
    status, body = srv.get("/")
    assert status == 200 and body != f"ok {first}"


# ---- --reload ------------------------------------------------------------------------------------

RELOAD_APP = '''
VERSION = {version!r}


def app(environ, start_response):
    body = VERSION.encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
'''


def _write(path, text: str) -> None:
    # Written whole and renamed into place, as an editor saving a file does.
    tmp = path.with_name(path.name + ".tmp~")
    tmp.write_text(text)
    os.replace(tmp, path)


def _wait_body(srv: Supervised, expected: str, timeout: float = 20) -> None:
    last: list[str] = []

    def check() -> bool:
        last[:] = [srv.get()[1]]
        return last[0] == expected

    wait_until(check, timeout, lambda: f"body {expected!r}, last {last!r}:\n{srv.output}")


@pytest.fixture
def reload_env(tmp_path):
    _write(tmp_path / "reload_app.py", RELOAD_APP.format(version="one"))
    return tmp_path, {"PYTHONDONTWRITEBYTECODE": "1", "FULMEN_APP_DIR": str(tmp_path)}


def test_reload_restarts_when_a_python_file_changes(supervised, reload_env):
    tmp_path, env = reload_env
    srv = supervised("--reload", "--reload-dir", str(tmp_path), app="reload_app:app", env=env)
    assert srv.get() == (200, "one")
    (tmp_path / "notes.txt").write_text("not watched\n")  # no reload for this one...
    _write(tmp_path / "reload_app.py", RELOAD_APP.format(version="two"))  # ...but for this
    _wait_body(srv, "two")
    first = re.search(r"Reloading: (\S+) changed", srv.output)
    assert first and first.group(1).endswith("reload_app.py"), srv.output
    # A new subpackage is watched too.
    (tmp_path / "pkg").mkdir()
    srv.wait_count(r"Worker \d+ ready", 2)
    _write(tmp_path / "pkg" / "mod.py", "X = 1\n")
    srv.wait_count(r"Reloading: \S+pkg/mod\.py changed", 1)


def test_reload_include_and_exclude(supervised, reload_env):
    tmp_path, env = reload_env
    srv = supervised("--reload", "--reload-dir", str(tmp_path), "--reload-include", "*.txt",
                     "--reload-exclude", "skip_*.py", app="reload_app:app", env=env)
    (tmp_path / "skip_me.py").write_text("X = 1\n")  # excluded
    (tmp_path / "notes.txt").write_text("watched now\n")
    srv.wait_count(r"Reloading: \S+ changed", 1)
    assert re.search(r"Reloading: \S+notes\.txt changed", srv.output), srv.output


def test_reload_waits_for_a_fix_when_the_code_is_broken(supervised, reload_env):
    tmp_path, env = reload_env
    srv = supervised("--reload", "--reload-dir", str(tmp_path), app="reload_app:app", env=env)
    _write(tmp_path / "reload_app.py", "this is not python\n")
    srv.wait_count(r"failed to boot", 1)
    assert srv.get() == (200, "one")  # the running worker goes on
    _write(tmp_path / "reload_app.py", RELOAD_APP.format(version="three"))
    _wait_body(srv, "three")
    assert srv.proc.poll() is None


def test_reload_that_cannot_boot_at_start_waits_for_a_fix(reload_env):
    tmp_path, env = reload_env
    _write(tmp_path / "reload_app.py", "raise RuntimeError('not yet')\n")
    srv = Server([sys.executable, "-m", "fulmen", "--port", "0", "--reload", "--reload-dir", str(tmp_path),
                  "reload_app:app"], env, ready=re.compile(r"(waiting) for a file change"))
    try:
        port = int(LISTENING.search(srv.output).group(1).rsplit(":", 1)[1])
        srv.port = port
        _write(tmp_path / "reload_app.py", RELOAD_APP.format(version="fixed"))
        wait_until(lambda: "Ready: 1 worker serving" in srv.output, 20, lambda: srv.output)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"fixed"
        conn.close()
        assert srv.stop() == 0
    finally:
        srv.kill()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--reload-dir", "/tmp"], "--reload-dir needs --reload"),
        (["--reload-include", "*.txt"], "--reload-include needs --reload"),
        (["--reload", "--workers", "2"], "--reload and --workers both given"),
        (["--reload", "--preload"], "--reload and --preload both given"),
        (["--reload", "--reload-dir", "/nonexistent/dir"], "--reload-dir /nonexistent/dir: not a directory"),
    ],
)
def test_invalid_reload_options(args, expected):
    result = run_fulmen("--port", "0", "hello:app", *args)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert expected in result.stderr


def test_option_values_from_every_source():
    from fulmen import config

    cfg = config.parse_args(["--reload", "--reload-dir", "a", "--reload-dir", "b", "app:x"],
                            {"FULMEN_RELOAD_INCLUDE": "*.txt, *.cfg"})
    assert cfg["reload_dir"] == ("a", "b") and cfg["reload_include"] == ("*.txt", "*.cfg")
    assert cfg["workers"] == 1 and cfg["reload_exclude"] is None
    assert config.parse_args(["--workers", "AUTO", "app:x"], {})["workers"] == (os.cpu_count() or 1)
    assert config.parse_args(["app:x"], {"FULMEN_WORKERS": "3"})["workers"] == 3
    assert config.parse_args(["app:x"], {})["workers"] is None  # one process unless asked
    assert config.from_kwargs({"workers": "auto"})["workers"] == (os.cpu_count() or 1)
    assert config.from_kwargs({"workers": 2, "max_requests": 5})["max_requests"] == 5
    assert config.from_kwargs({"reload": True, "reload_dir": ["src"]})["reload_dir"] == ("src",)
    with pytest.raises(ValueError, match="workers=True"):
        config.from_kwargs({"workers": True})
    with pytest.raises(ValueError, match="reload_dir=.*non-empty strings"):
        config.from_kwargs({"reload": True, "reload_dir": [1]})
