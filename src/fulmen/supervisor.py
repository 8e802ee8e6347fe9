"""The supervisor (--workers): bind once, fork workers that share the socket, keep them running.

Design (docs/deployment.md has the user's view):

- One listening socket, bound here and inherited by every forked worker, rather than one
  SO_REUSEPORT socket per worker. With SO_REUSEPORT the kernel hashes each connection to one
  socket's own queue, and the connections queued on a worker's socket when that worker stops are
  reset: a reload would lose requests. A shared socket has one queue that outlives any worker, so
  a draining worker simply stops accepting and the others take what follows. The engine registers
  the socket with EPOLLEXCLUSIVE so a new connection wakes one idle worker, not all of them, and
  workers do not shut the socket down when they stop (shutdown_listeners=False), which would
  refuse connections for every worker.
- Workers are forked, not exec'd: the app is imported in each worker after the fork (or once
  here before it with --preload), and nothing here starts a thread or an event loop, so a fork
  never copies a lock held by another thread.
- Each worker has a pipe to us. The worker writes b"R" once it serves (listening, ASGI lifespan
  startup done); its engine's loop thread writes b"." every heartbeat interval (--timeout) and
  b"M" when --max-requests is reached. A worker that exits before b"R" failed to boot.
- Replacements first: on HUP, --max-requests and --max-rss, new workers are
  started and an outdated one is told to drain only when enough ready workers remain to keep
  --workers of them serving. A draining worker finishes its requests (and answers the next request
  of an idle keep-alive connection with "Connection: close") within --graceful-timeout.

--reload (development) is the same machinery with one worker: a change to a watched file
(_reloader.py, inotify) is a HUP, and a worker that cannot boot there waits for the next change
instead of stopping the supervisor.

Signals (as Gunicorn): TERM/INT graceful stop (a second one: stop now), QUIT stop now, HUP
reload (new workers, re-importing the app unless --preload, then the old ones drain), TTIN/TTOU one
worker more/fewer, USR1 forwarded to the workers.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import os
import random
import select
import signal
import sys
import threading
import time
import traceback
from typing import Any

from fulmen import FulmenError, _reloader, _sockets
from fulmen import server as _server

error_log = _server.error_log

# The worker's faulthandler dumps every thread's Python stack on this signal; the supervisor sends
# it to a worker that missed its heartbeats, then SIGKILL after KILL_GRACE.
STACK_SIGNAL = signal.SIGUSR2
KILL_GRACE = 1.0  # seconds between the stack dump and SIGKILL
STOP_NOW_GRACE = 3.0  # QUIT or a second TERM: SIGKILL a worker still alive after this long
KILL_AFTER_GRACEFUL = 5.0  # beyond --graceful-timeout (the worker's own watchdog exits at +2 s)
TICK = 1.0  # the supervisor's longest sleep: --max-rss and deadlines are checked this often
RELOAD_DEBOUNCE = 0.1  # --reload: an editor's save is several events; restart once, after them
READY, BEAT, RETIRE = b"R", b".", b"M"  # what a worker writes on its pipe (see src/core/server.hpp)

_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN,
            signal.SIGTTOU, signal.SIGUSR1, signal.SIGCHLD)
# Meant for the supervisor; a worker that gets them (a signal to the whole process group, Ctrl-C
# in a terminal) must not die of them. The supervisor relays a stop as TERM or QUIT.
_WORKER_IGNORES = (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH,
                   signal.SIGUSR1)


def _ignore(signum: int, frame: Any) -> None:
    """A worker's handler for signals meant for its supervisor (see _WORKER_IGNORES)."""


def heartbeat_interval(timeout: float) -> float:
    """How often a worker's loop beats: four beats per --timeout, at most one a second, so that an
    idle worker wakes up at most once a second."""
    return min(1.0, timeout / 4) if timeout > 0 else 0.0


@dataclasses.dataclass
class _WorkerLink:
    """What a worker knows of its supervisor; server.py reads it as cfg["_worker"]."""

    fd: int  # the pipe's write end
    heartbeat: float  # seconds between beats, 0: none
    max_requests: int  # 0: none

    def engine_options(self) -> dict[str, Any]:
        return dict(shutdown_listeners=False, supervisor_fd=self.fd, heartbeat_interval=self.heartbeat,
                    max_requests=self.max_requests, multiprocess=True)

    def ready(self) -> None:
        try:
            os.write(self.fd, READY)
        except BlockingIOError:  # a full pipe: the supervisor is not reading; it will see beats
            pass


@dataclasses.dataclass
class _Worker:
    pid: int
    fd: int  # the pipe's read end; -1 once it reached EOF
    generation: int
    born: float
    ready: bool = False
    last_beat: float = 0.0
    retire: bool = False  # asked to be replaced (--max-requests, --max-rss)
    stopping_since: float | None = None  # told to stop (TERM, QUIT or a kill)
    kill_at: float | None = None  # SIGKILL if still alive then
    reason: str = ""  # why we stopped it, for the exit log line
    reopen_pending: bool = False  # a USR1 came while it booted: sent once it is ready


class Supervisor:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.target = int(cfg["workers"])
        self.timeout = float(cfg["timeout"])
        self.max_rss = int(cfg["max_rss"]) * 1024 * 1024
        self.workers: dict[int, _Worker] = {}
        self.generation = 0
        self.stopping: str | None = None  # "graceful" or "now"
        self.failure: FulmenError | None = None  # a worker could not boot: stop and report it
        self.loaded: tuple[Any, str, Any] | None = None  # --preload
        self.listeners: _sockets.Listeners | None = None
        self.signals: list[int] = []
        self.wake_r = self.wake_w = -1
        self.all_ready = False  # every current worker is ready (logged once per change)
        self.pid = os.getpid()
        self.watcher: _reloader.Watcher | None = None  # --reload
        self.reload_at: float | None = None  # --reload: a change was seen; reload then
        self.changed_file = ""
        self.waiting_for_change = False  # --reload: the code does not boot; wait for a fix
        self.boot_backoff = 0.0  # seconds before the next try after a failed boot (while others serve)
        self.spawn_after = 0.0  # monotonic time before which no worker is started

    # ---- the supervisor's life ----------------------------------------------------------------

    def run(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise FulmenError("--workers needs the main thread (the supervisor handles signals); "
                              "call fulmen.run() from the main thread or drop the workers option")
        cfg = self.cfg
        if cfg["preload"]:
            self.loaded = _server.load(cfg)
            # Forking copies only the calling thread: a lock held by another thread stays locked
            # in every worker.
            if threading.active_count() > 1:
                error_log.warning("--preload: importing the app started %d thread(s); forked workers "
                                  "do not get them, and a lock they hold stays held",
                                  threading.active_count() - 1)
        if cfg["reload"]:
            if not isinstance(cfg["app"], str):
                raise FulmenError('--reload needs the app as an import string ("module:attribute"), '
                                  "so that a new worker can import it again")
            self.watcher = _reloader.Watcher(cfg["reload_dir"], cfg["reload_include"], cfg["reload_exclude"])
            error_log.info("Watching for changes in %s (%s)", ", ".join(map(str, self.watcher.dirs)),
                           ", ".join(self.watcher.includes))
        _server.raise_open_files_limit()
        try:
            self.listeners = _sockets.bind(cfg)
        except BaseException:
            if self.watcher is not None:
                self.watcher.close()
            raise
        self._install_signals()
        try:
            error_log.info("Starting Fulmen %s supervisor (pid %d) with %d worker%s", _server.__version__,
                           os.getpid(), self.target, "" if self.target == 1 else "s")
            for listener in self.listeners:
                error_log.info("Listening on %s", listener.url)
            self._loop()
        except BaseException:
            for w in self.workers.values():  # a bug of ours must not leave workers behind
                self._kill(w, signal.SIGTERM)
            raise
        finally:
            self._restore_signals()
            self.listeners.close()
            if self.watcher is not None:
                self.watcher.close()
        if self.failure is not None:
            raise self.failure
        error_log.info("Finished")

    def _loop(self) -> None:
        while True:
            self._handle_signals()
            self._reap()
            if self.stopping and not self.workers:
                return
            if not self.stopping and self.reload_at is not None and time.monotonic() >= self.reload_at:
                self.reload_at = None
                self.generation += 1
                self.waiting_for_change = False
                error_log.info("Reloading: %s changed", self.changed_file)
            if not self.stopping:
                self._manage()
            self._check_workers()
            self._wait()

    def _install_signals(self) -> None:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in _HANDLED}
        self._previous_fd = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)  # handled in the loop; the wakeup fd ends its sleep

    def _wait(self) -> None:
        fds = [self.wake_r] + [w.fd for w in self.workers.values() if w.fd >= 0]
        if self.watcher is not None:
            fds.append(self.watcher.fd)
        timeout = TICK if self.timeout <= 0 else min(TICK, self.timeout / 4)
        deadlines = [w.kill_at for w in self.workers.values() if w.kill_at is not None]
        if self.reload_at is not None:
            deadlines.append(self.reload_at)
        if deadlines:
            timeout = max(0.0, min(timeout, min(deadlines) - time.monotonic()))
        if self.signals:
            timeout = 0
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        readable = {fd for fd, _ in poller.poll(timeout * 1000)}
        now = time.monotonic()
        if self.wake_r in readable:
            try:
                while os.read(self.wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        for w in list(self.workers.values()):
            if w.fd >= 0 and w.fd in readable:
                self._read_pipe(w, now)
        if self.watcher is not None and self.watcher.fd in readable:
            changed = self.watcher.changed()
            if changed and self.reload_at is None:
                self.changed_file = changed[0]
                self.reload_at = now + RELOAD_DEBOUNCE

    def _read_pipe(self, w: _Worker, now: float) -> None:
        try:
            data = os.read(w.fd, 4096)
        except BlockingIOError:
            return
        if not data:  # the worker is gone (or closed it): wait for its exit status
            os.close(w.fd)
            w.fd = -1
            return
        w.last_beat = now
        if READY in data and not w.ready:
            w.ready = True
            self.boot_backoff = 0.0
            error_log.info("Worker %d ready", w.pid)
            if w.reopen_pending:
                # Before it was ready, its handler might not have been installed yet (the signal
                # would have been lost): it gets the USR1 now.
                w.reopen_pending = False
                self._kill(w, signal.SIGUSR1)
        if RETIRE in data and not w.retire and w.stopping_since is None:
            error_log.info("Worker %d served its --max-requests: replacing it", w.pid)
            w.retire = True

    # ---- signals ------------------------------------------------------------------------------

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            name = signal.Signals(sig).name
            if sig in (signal.SIGTERM, signal.SIGINT):
                if self.stopping is None:
                    error_log.info("Shutting down (%s): workers finish in-flight requests for up to %gs",
                                   name, self.cfg["graceful_timeout"])
                    self._stop_all("graceful")
                else:
                    error_log.info("Stopping now (%s)", name)
                    self._stop_all("now")
            elif sig == signal.SIGQUIT:
                error_log.info("Stopping now (%s)", name)
                self._stop_all("now")
            elif self.stopping:
                continue
            elif sig == signal.SIGHUP:
                self.generation += 1
                self.waiting_for_change = False
                same = self.loaded is not None or not isinstance(self.cfg["app"], str)
                error_log.info("Reloading (SIGHUP): starting %d new worker%s%s; the old ones stop once "
                               "they are ready", self.target, "" if self.target == 1 else "s",
                               " (the app was loaded before forking: same code)" if same else "")
            elif sig == signal.SIGTTIN:
                self.target += 1
                error_log.info("SIGTTIN: %d workers", self.target)
            elif sig == signal.SIGTTOU:
                if self.target > 1:
                    self.target -= 1
                error_log.info("SIGTTOU: %d worker%s", self.target, "" if self.target == 1 else "s")
            elif sig == signal.SIGUSR1:
                _server.reopen_log_files()  # the supervisor's own error log
                booting = 0
                for w in self.workers.values():
                    if w.ready:
                        self._kill(w, signal.SIGUSR1)
                    else:
                        w.reopen_pending = True
                        booting += 1
                sent = len(self.workers) - booting
                error_log.info("SIGUSR1: forwarded to %d worker%s%s", sent, "" if sent == 1 else "s",
                               f" ({booting} more once ready)" if booting else "")

    def _stop_all(self, how: str) -> None:
        self.stopping = how
        for w in self.workers.values():
            if how == "now":
                self._stop(w, signal.SIGQUIT, "stop now")
            elif w.stopping_since is None:
                self._stop(w, signal.SIGTERM, "shutdown")

    def _stop(self, w: _Worker, sig: int, reason: str) -> None:
        now = time.monotonic()
        if w.stopping_since is None:
            w.stopping_since = now
        w.reason = w.reason or reason
        grace = STOP_NOW_GRACE if sig == signal.SIGQUIT else self.cfg["graceful_timeout"] + KILL_AFTER_GRACEFUL
        w.kill_at = min(w.kill_at, now + grace) if w.kill_at is not None else now + grace
        self._kill(w, sig)

    @staticmethod
    def _kill(w: _Worker, sig: int) -> None:
        try:
            os.kill(w.pid, sig)
        except ProcessLookupError:
            pass  # exited already; _reap collects it

    # ---- workers ------------------------------------------------------------------------------

    def _manage(self) -> None:
        """Start and stop workers so that `target` current workers serve, replacing outdated ones
        (an older generation, or asked to retire) only once that leaves enough ready workers."""
        if self.failure is not None or self.waiting_for_change:
            return
        active = [w for w in self.workers.values() if w.stopping_since is None]
        current = [w for w in active if w.generation == self.generation and not w.retire]
        outdated = sorted((w for w in active if w not in current), key=lambda w: w.born)
        if time.monotonic() >= self.spawn_after:
            for _ in range(self.target - len(current)):
                current.append(self._spawn())
                self.all_ready = False
        if len(current) > self.target:  # TTOU: the oldest go, as in Gunicorn
            for w in sorted(current, key=lambda w: w.born)[: len(current) - self.target]:
                self._stop(w, signal.SIGTERM, "fewer workers (SIGTTOU)")
                current.remove(w)
        ready = sum(1 for w in current if w.ready)
        # An outdated worker that is not ready yet (a HUP during a reload) serves nobody: it goes
        # at once; a ready one once the others that are ready are enough.
        for w in sorted(outdated, key=lambda w: w.ready):
            others = ready + sum(1 for o in outdated if o.ready and o is not w)
            if not w.ready or others >= self.target:
                self._stop(w, signal.SIGTERM, "replaced" if w.retire else "reload")
                outdated.remove(w)
        if ready == self.target and not outdated and not self.all_ready:
            self.all_ready = True
            error_log.info("Ready: %d worker%s serving", ready, "" if ready == 1 else "s")

    def _spawn(self) -> _Worker:
        r, w = os.pipe()
        sys.stdout.flush()  # or the child would write our buffered lines again
        sys.stderr.flush()
        # Signals stay blocked across the fork: one sent to the new worker before it has its own
        # handlers waits (pending) until it has them, instead of running the supervisor's handler
        # in the child, where it would be lost.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        pid = os.fork()
        if pid == 0:  # the worker; never returns
            os.close(r)
            self._worker_main(w, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(w)
        os.set_blocking(r, False)
        now = time.monotonic()
        worker = _Worker(pid=pid, fd=r, generation=self.generation, born=now, last_beat=now)
        self.workers[pid] = worker
        error_log.info("Started worker %d", pid)
        return worker

    def _worker_main(self, fd: int, mask: set) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in _HANDLED:
                signal.signal(sig, signal.SIG_DFL)
            for sig in _WORKER_IGNORES:
                # A handler that does nothing rather than SIG_IGN: an ignored signal stays ignored
                # in every process the app starts (exec keeps SIG_IGN, resets handlers).
                signal.signal(sig, _ignore)
            # "Stop now" before the server's own handlers are in place (while importing the app):
            # exit, rather than QUIT's default action, a core dump.
            signal.signal(signal.SIGQUIT, lambda signum, frame: os._exit(0))
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            _stop_with_parent(self.pid)
            os.close(self.wake_r)
            os.close(self.wake_w)
            if self.watcher is not None:
                self.watcher.close()
            for other in self.workers.values():
                if other.fd >= 0:
                    os.close(other.fd)
            self.workers = {}
            if self.timeout > 0:
                # The stack goes where the error log goes (--error-logfile, else stderr).
                faulthandler.register(STACK_SIGNAL, file=_server.error_log_stream(), all_threads=True)
            max_requests = self.cfg["max_requests"]
            if max_requests and self.cfg["max_requests_jitter"]:
                max_requests += random.randint(0, self.cfg["max_requests_jitter"])
            # The engine's loop writes beats here: it must never block on a supervisor that does
            # not read (stopped with SIGSTOP, say); a beat that does not fit is dropped.
            os.set_blocking(fd, False)
            cfg = dict(self.cfg, _worker=_WorkerLink(fd, heartbeat_interval(self.timeout), max_requests))
            assert self.listeners is not None
            # The socket files of Unix sockets belong to the supervisor: a worker must not remove them.
            listeners = _sockets.Listeners(dataclasses.replace(li, unlink_path=None) for li in self.listeners)
            loaded = self.loaded if self.loaded is not None else _server.load(cfg)
            _server.serve_app(cfg, loaded, listeners)
            code = 0
        except FulmenError as exc:
            if exc.detail:
                out = _server.error_log_stream()
                out.write(exc.detail if exc.detail.endswith("\n") else exc.detail + "\n")
            error_log.error("Worker %d: %s", os.getpid(), exc)
            code = exc.exit_code
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc(file=_server.error_log_stream())
            code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is None:
                continue
            if w.fd >= 0:
                self._read_pipe(w, time.monotonic())  # a b"R" that came with the exit
                if w.fd >= 0:
                    os.close(w.fd)
            how = describe_exit(status)
            if w.stopping_since is not None:
                error_log.info("Worker %d stopped (%s; %s)", pid, w.reason, how)
            elif not w.ready:
                self._boot_failed(w, status, how)
            elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                error_log.info("Worker %d exited (%s, stopped by someone else); starting a new one", pid, how)
            else:
                error_log.error("Worker %d died (%s); starting a new one", pid, how)

    def _boot_failed(self, w: _Worker, status: int, how: str) -> None:
        old = [o for o in self.workers.values() if o.stopping_since is None and o.generation < w.generation]
        if old:
            # A reload whose new code does not start: keep serving with the old workers.
            error_log.error("Worker %d failed to boot (%s; its error is above): reload failed, the "
                            "running workers keep serving", w.pid, how)
            for o in list(self.workers.values()):
                if o.stopping_since is None and o.generation == w.generation:
                    self._stop(o, signal.SIGTERM, "reload failed")
            for o in old:
                o.generation = self.generation
            return
        if self.watcher is not None:
            error_log.error("Worker %d failed to boot (%s; its error is above); waiting for a file change "
                            "to try again", w.pid, how)
            self.waiting_for_change = True
            return
        serving = [o for o in self.workers.values() if o.ready and o.stopping_since is None]
        if serving:
            # A replacement (after a crash, --max-requests, --max-rss, --timeout) that cannot boot
            # while others serve: the code on disk may be broken, or a resource its startup needs
            # is down. Keep serving and try again, waiting longer each time (up to 30 s).
            self.boot_backoff = min(max(2 * self.boot_backoff, 1.0), 30.0)
            self.spawn_after = time.monotonic() + self.boot_backoff
            error_log.error("Worker %d failed to boot (%s; its error is above): %s serving; trying again "
                            "in %gs", w.pid, how, "1 worker keeps" if len(serving) == 1 else
                            f"{len(serving)} workers keep", self.boot_backoff)
            return
        # As Gunicorn: a worker that cannot boot will not boot the next time either; restarting it
        # in a loop would only hide the error.
        code = os.waitstatus_to_exitcode(status)
        error_log.error("Worker %d failed to boot (%s); stopping", w.pid, how)
        failure = FulmenError(f"a worker failed to boot ({how}); its error is above")
        failure.exit_code = code if code > 0 else 1
        self.failure = failure
        self._stop_all("graceful")

    def _check_workers(self) -> None:
        now = time.monotonic()
        for w in list(self.workers.values()):
            if w.kill_at is not None and now >= w.kill_at:
                if w.reason != "timeout":
                    error_log.warning("Worker %d did not stop in time (%s): killing it", w.pid, w.reason)
                w.kill_at = None
                self._kill(w, signal.SIGKILL)
                continue
            if w.stopping_since is not None or not w.ready:
                continue
            if self.timeout > 0 and now - w.last_beat > self.timeout:
                error_log.error("Worker %d timed out: its event loop has not run for %gs (--timeout %g); "
                                "its Python stack follows, then it is killed", w.pid, now - w.last_beat,
                                self.timeout)
                sys.stderr.flush()
                w.stopping_since = now
                w.reason = "timeout"
                w.kill_at = now + KILL_GRACE
                self._kill(w, STACK_SIGNAL)
                continue
            if self.max_rss and not w.retire:
                rss = rss_bytes(w.pid)
                if rss is not None and rss > self.max_rss:
                    error_log.info("Worker %d uses %d MiB, more than --max-rss %d: replacing it", w.pid,
                                   rss // (1024 * 1024), self.max_rss // (1024 * 1024))
                    w.retire = True


def _stop_with_parent(supervisor: int) -> None:
    """A supervisor killed with SIGKILL cannot stop its workers: have the kernel send each one
    SIGTERM (a graceful stop) when it dies, instead of leaving them serving without a supervisor."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {name}"
    return f"exit code {os.WEXITSTATUS(status)}"


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int) -> int | None:
    """Resident memory of `pid` from /proc (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None
