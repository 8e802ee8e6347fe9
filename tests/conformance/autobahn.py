#!/usr/bin/env python3
"""Run the Autobahn|Testsuite fuzzing cases against the server under test, with kosoku.

    python tests/conformance/autobahn.py --cases 1-7,10 [--server fulmen|uvicorn]
                                         [--report-dir DIR] [--fulmen-args "..."]

kosoku (PyPI) is a WebSocket client that drives Autobahn's own case files (groups 1-7, 9, 10, 12
and 13: framing, pings, reserved bits and opcodes, fragmentation, UTF-8, closing handshake,
limits/performance, auto-fragmentation, permessage-deflate) and grades each case the way Autobahn
does: a `behavior` (OK, NON-STRICT, INFORMATIONAL, FAILED, UNIMPLEMENTED, ERROR) for the message
exchange and a `behaviorClose` (OK, INFORMATIONAL, FAILED, WRONG CODE, UNCLEAN, FAILED BY
CLIENT) for the closing handshake.

This script starts the server (Fulmen, or Uvicorn as the reference) with the echo app
tests/conformance/apps/ws_echo.py on 127.0.0.1 and a port the kernel picks, waits for its
"listening" log line, runs the selected cases, writes kosoku's report (index.html, index.json and
one JSON+HTML file per case) plus our summary.json into --report-dir, prints a table of verdicts
per group and exits non-zero if any case is not acceptable. A case is acceptable when its behavior
is OK, NON-STRICT or INFORMATIONAL *and* its close verdict is OK or INFORMATIONAL (the same rule as
kosoku's CaseResult.passed); a case the runner had to abandon on a timeout is not.

Why not just call kosoku's CLI: kosoku has no timeouts of its own (no opening- or closing-handshake
timeout, no case deadline; only the delays a case schedules itself), so a server that never answers
would hang the run forever. Each case therefore runs as its own kosoku call under a deadline here,
which also keeps the verdicts of every other case when one hangs.

Exit status: 0 every case acceptable, 1 some case not, 2 the run itself could not be done (server
did not start, bad arguments, kosoku missing).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
APP_SPEC = "ws_echo:app"

# The Autobahn groups kosoku ships (8 and 11 do not exist in Autobahn either).
ALL_GROUPS = (1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 13)

ACCEPTED_BEHAVIOR = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})
# "Clean close" in kosoku's terms: the close verdict says the right side closed, cleanly where the
# case requires it, with an expected code. WRONG CODE, UNCLEAN, FAILED and FAILED BY CLIENT are not.
CLEAN_CLOSE = frozenset({"OK", "INFORMATIONAL"})
# Verdicts of our own, for cases kosoku did not grade.
TIMEOUT = "TIMEOUT"  # abandoned at the runner's per-case deadline
NOT_RUN = "NOT RUN"  # never started: the --total-timeout budget was spent

BEHAVIOR_COLUMNS = ("OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED", "ERROR",
                    TIMEOUT, NOT_RUN)

# A conformant server finishes each case of groups 1-7 and 10 in milliseconds, and the cases bound
# a misbehaving one themselves (killAfter/closeAfter of 1-10 s), so 30 s is only ever reached when
# the server stops answering altogether.
DEFAULT_CASE_TIMEOUT = 30.0
# 9.1-9.6 set their own wait (10 to 1000 s) in init(), out of our sight; a conformant server needs
# well under a second per case on the CI machine, so two minutes is a hang, not slowness.
GROUP9_CASE_TIMEOUT = 120.0
# 9.7/9.8 and 12/13 declare WAITSECS on the class (60-480 s): after it the case closes by itself,
# and this margin leaves room for the closing handshake before the runner gives up on the case.
WAITSECS_MARGIN = 30.0

READY_PATTERNS = {
    "fulmen": re.compile(r"Listening on \S+"),
    "uvicorn": re.compile(r"Uvicorn running on \S+"),
}

# `uvicorn --fd N` wraps the inherited descriptor with socket.fromfd(fd, AF_UNIX, ...) whatever
# it really is; for our TCP socket that yields wrong scope["client"]/["server"]. Letting the socket
# module read the family from the descriptor itself fixes that; everything else is stock Uvicorn.
UVICORN_LAUNCHER = (
    "import os, socket, sys\n"
    "socket.fromfd = lambda fd, family=-1, type=-1, proto=-1: socket.socket(fileno=os.dup(fd))\n"
    "from uvicorn.main import main\n"
    "sys.argv[0] = 'uvicorn'\n"
    "main()\n"
)
# Uvicorn and Fulmen ping every WebSocket every 20 s by default. Autobahn's Case.onPing treats any ping it did
# not ask for as the end of the case (it records it and starts the closing handshake), so each
# 12.x/13.x case that runs longer than 20 s would be reported FAILED for a keepalive, not for its
# protocol handling. An interval longer than any case deadline keeps the keepalive out of the run.
PING_INTERVAL = "3600"


def parse_selection(text: str, known_groups: set[int]) -> tuple[list[int], list[str]]:
    """"1-7,10" -> groups [1..7, 10]; "all" -> every group; "9.7.*" or "6.4.3" (anything with a
    dot) -> a kosoku case id or glob, for re-running single cases. Returns (groups, patterns)."""
    groups: set[int] = set()
    patterns: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if token == "all":
            groups.update(ALL_GROUPS)
        elif "." in token:
            patterns.append(token)
        elif m := re.fullmatch(r"(\d+)(?:-(\d+))?", token):
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if lo > hi:
                raise ValueError(f"empty range {token!r}")
            span = {g for g in range(lo, hi + 1) if g in known_groups}
            if not span:
                raise ValueError(f"no Autobahn group in {token!r} (groups: {sorted(known_groups)})")
            if lo == hi and lo not in known_groups:
                raise ValueError(f"no Autobahn group {lo} (groups: {sorted(known_groups)})")
            groups.update(span)  # a range may span the missing 8 and 11
        else:
            raise ValueError(f"bad case selection {token!r}: use e.g. 1-7,10 or all or 9.7.*")
    if not groups and not patterns:
        raise ValueError("empty case selection")
    return sorted(groups), patterns


def case_key(case_id: str) -> list[int]:
    return [int(p) for p in case_id.split(".")]


def select_cases(cases: dict[str, type], groups: list[int], patterns: list[str]) -> list[str]:
    chosen = {cid for cid in cases if int(cid.split(".")[0]) in groups}
    for pat in patterns:
        rx = re.compile("^" + re.escape(pat).replace(r"\*", ".*") + "$")
        hits = {cid for cid in cases if rx.match(cid)}
        if not hits:
            raise ValueError(f"no kosoku case matches {pat!r}")
        chosen |= hits
    return sorted(chosen, key=case_key)


def case_timeout(case_id: str, case_class: type, base: float) -> float:
    waitsecs = getattr(case_class, "WAITSECS", None)
    if isinstance(waitsecs, (int, float)):
        return max(base, waitsecs + WAITSECS_MARGIN)
    if case_id.startswith("9."):
        return max(base, GROUP9_CASE_TIMEOUT)
    return base


# ---- the server under test ------------------------------------------------------------------------

class ServerProcess:
    """The server under test, serving on a listening socket we bound (so the port is known before
    it starts and no --port 0 log parsing is needed); ready once its log says it listens."""

    def __init__(self, command: list[str], sock: socket.socket, ready: re.Pattern,
                 ready_timeout: float) -> None:
        self.command = command
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = 0
        env = {k: v for k, v in os.environ.items() if not k.startswith("FULMEN_")}
        # FULMEN_*: a developer's shell must not change the configuration under test.
        self.proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, errors="replace",
                                     pass_fds=(sock.fileno(),), start_new_session=True)
        # Both pipes are drained on threads for the whole run: a server blocked on a full pipe would
        # stall mid-case and show up as a protocol failure.
        self._readers = [threading.Thread(target=self._drain, args=(pipe,), daemon=True)
                         for pipe in (self.proc.stdout, self.proc.stderr)]
        for t in self._readers:
            t.start()
        if not self._wait_ready(ready, ready_timeout):
            self.stop()
            raise RuntimeError(f"the server did not log {ready.pattern!r} within {ready_timeout:g}s "
                               f"(exit code {self.proc.returncode}):\n  {display_command(command)}\n"
                               + self.tail(40))

    def _drain(self, pipe) -> None:
        for line in pipe:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof += 1
            self._cond.notify_all()

    def _wait_ready(self, ready: re.Pattern, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                if any(ready.search(line) for line in self.lines[seen:]):
                    return True
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self._eof == len(self._readers):  # timed out, or it exited
                    return False
                self._cond.wait(left)

    def tail(self, n: int) -> str:
        with self._cond:
            return "\n".join(f"  | {line}" for line in self.lines[-n:])

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (graceful), then SIGKILL if it lingers; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._readers:
            t.join(5)
        return self.proc.returncode


def server_command(kind: str, fd: int, args: argparse.Namespace) -> list[str]:
    if kind == "fulmen":
        # --interface asgi: the app is ASGI; auto-detection is not what this run is about.
        return [sys.executable, "-m", "fulmen", "--fd", str(fd), "--app-dir", str(APPS),
                "--interface", "asgi", "--no-access-log", "--ws-ping-interval", PING_INTERVAL,
                *shlex.split(args.fulmen_args), APP_SPEC]
    return [sys.executable, "-c", UVICORN_LAUNCHER, "--fd", str(fd), "--app-dir", str(APPS),
            "--ws", args.uvicorn_ws, "--ws-ping-interval", PING_INTERVAL, "--no-access-log",
            *shlex.split(args.uvicorn_args), APP_SPEC]


def display_command(command: list[str]) -> str:
    """The command line for humans: the multi-line Uvicorn launcher shown by name."""
    return shlex.join(command).replace(shlex.quote(UVICORN_LAUNCHER), "<uvicorn --fd launcher>")


def start_server(kind: str, args: argparse.Namespace) -> tuple[ServerProcess, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        port = sock.getsockname()[1]
        server = ServerProcess(server_command(kind, sock.fileno(), args), sock, READY_PATTERNS[kind],
                               args.ready_timeout)
    finally:
        # The child holds its own copy now; ours must go, or connections would still queue on it
        # after the server died, and the cases would wait instead of being refused.
        sock.close()
    return server, port


# ---- running the cases -----------------------------------------------------------------------------

@dataclass
class Outcome:
    case_id: str
    behavior: str
    behavior_close: str
    duration_ms: int
    result: str = ""
    result_close: str = ""
    was_clean: bool | None = None
    remote_close_code: int | None = None
    remote_close_reason: str | None = None
    limit_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.behavior in ACCEPTED_BEHAVIOR and self.behavior_close in CLEAN_CLOSE

    def explain(self) -> str:
        if self.behavior in (TIMEOUT, NOT_RUN):
            return self.result
        text = f"behavior {self.behavior}, close {self.behavior_close}: {self.result}"
        if self.behavior_close not in CLEAN_CLOSE and self.result_close:
            text += f" / {self.result_close}"
        if self.remote_close_code is not None:
            text += f" (server closed with {self.remote_close_code}"
            text += f" {self.remote_close_reason!r})" if self.remote_close_reason else ")"
        return text


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    group_seconds: dict[int, float] = field(default_factory=dict)
    kosoku_results: list = field(default_factory=list)  # kosoku CaseResult objects, for its report
    abandoned: int = 0  # cases cancelled at a deadline, whose kosoku tasks may still be running


async def run_case(kosoku, url: str, case_id: str, limit: float, run: Run) -> Outcome:
    started = time.monotonic()
    try:
        results = await asyncio.wait_for(kosoku.run_fuzzingclient(url, [case_id]), limit)
    except kosoku.FailureError as failure:  # raised whenever the case is not acceptable to kosoku
        results = failure.results
    except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11 (3.10 is supported)
        run.abandoned += 1
        return Outcome(case_id, TIMEOUT, "-", int((time.monotonic() - started) * 1000),
                       result=f"no verdict within the runner's {limit:g}s limit for this case "
                              f"(the server stopped answering?)", limit_s=limit)
    if len(results) != 1 or results[0].case_id != case_id:
        raise RuntimeError(f"kosoku returned {len(results)} results for case {case_id}")
    r = results[0]
    run.kosoku_results.append(r)
    return Outcome(case_id, r.behavior.value, r.behavior_close.value, r.duration, result=r.result,
                   result_close=r.result_close, was_clean=r.was_clean,
                   remote_close_code=r.remote_close_code, remote_close_reason=r.remote_close_reason,
                   limit_s=limit)


async def run_cases(kosoku, cases: dict[str, type], url: str, selected: list[str],
                    args: argparse.Namespace, server: ServerProcess) -> Run:
    run = Run()
    budget_end = time.monotonic() + args.total_timeout if args.total_timeout else None
    sem = asyncio.Semaphore(args.parallel)

    async def one(case_id: str) -> Outcome:
        async with sem:
            limit = case_timeout(case_id, cases[case_id], args.case_timeout)
            if budget_end is not None:
                left = budget_end - time.monotonic()
                if left <= 0:
                    return Outcome(case_id, NOT_RUN, "-", 0, limit_s=limit,
                                   result=f"not started: the {args.total_timeout:g}s "
                                          "--total-timeout was spent")
                limit = min(limit, left)
            return await run_case(kosoku, url, case_id, limit, run)

    # Group by group (so the per-group times mean something), up to --parallel cases at once.
    by_group: dict[int, list[str]] = {}
    for cid in selected:
        by_group.setdefault(int(cid.split(".")[0]), []).append(cid)
    for group, ids in sorted(by_group.items()):
        t0 = time.monotonic()
        print(f"group {group}: {len(ids)} cases ...", end="", flush=True)
        outcomes = await asyncio.gather(*(one(cid) for cid in ids))
        run.group_seconds[group] = time.monotonic() - t0
        run.outcomes.extend(outcomes)
        bad = sum(not o.passed for o in outcomes)
        print(f" {run.group_seconds[group]:.1f}s" + (f", {bad} not acceptable" if bad else ""), flush=True)
        if server.proc.poll() is not None:
            # Every later case would fail on "connection refused"; say why once, loudly.
            print(f"the server exited with code {server.proc.returncode} during group {group}:\n"
                  + server.tail(40), flush=True)
    return run


# ---- reporting --------------------------------------------------------------------------------------

def summary_table(run: Run) -> str:
    groups = sorted(run.group_seconds)
    header = ["group", "cases", *BEHAVIOR_COLUMNS, "close not clean", "passed", "seconds"]
    rows = []
    for g in [*groups, None]:
        outs = [o for o in run.outcomes if g is None or o.case_id.split(".")[0] == str(g)]
        counts = [sum(o.behavior == b for o in outs) for b in BEHAVIOR_COLUMNS]
        # Cases kosoku graded whose close verdict is not clean (TIMEOUT/NOT RUN have none).
        unclean = sum(o.behavior_close not in CLEAN_CLOSE and o.behavior not in (TIMEOUT, NOT_RUN)
                      for o in outs)
        secs = run.group_seconds[g] if g is not None else sum(run.group_seconds.values())
        rows.append([str(g) if g is not None else "all", str(len(outs)), *map(str, counts),
                     str(unclean), str(sum(o.passed for o in outs)), f"{secs:.1f}"])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    return "\n".join([line(header), *(line(r) for r in rows[:-1]), line(["-" * w for w in widths]),
                      line(rows[-1])])


def write_reports(run: Run, report_dir: Path, meta: dict) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    # kosoku's own report writer is what its CLI uses (`kosoku._report`, not re-exported by the
    # package): an Autobahn-style index.html/index.json plus a JSON and HTML file per case, with the
    # wire log. kosoku is pinned (requirements-dev.txt), so this private import cannot move under us.
    from kosoku._report import write_reports as kosoku_write_reports
    if run.kosoku_results:
        ordered = sorted(run.kosoku_results, key=lambda r: case_key(r.case_id))
        kosoku_write_reports(ordered, str(report_dir))
    summary = {
        **meta,
        "total": len(run.outcomes),
        "passed": sum(o.passed for o in run.outcomes),
        "group_seconds": {str(g): round(s, 3) for g, s in run.group_seconds.items()},
        "failing": [o.case_id for o in run.outcomes if not o.passed],
        "cases": [{**asdict(o), "passed": o.passed} for o in run.outcomes],
    }
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the Autobahn|Testsuite fuzzing cases (via kosoku) against an ASGI echo "
                    "app served by Fulmen or Uvicorn.")
    parser.add_argument("--cases", default="1-7,10",
                        help="groups and ranges (1-7,10), 'all', or case ids/globs (9.7.*, 6.4.3); "
                             "comma-separated [default: %(default)s]")
    parser.add_argument("--server", choices=("fulmen", "uvicorn"), default="fulmen",
                        help="the server under test [default: %(default)s]")
    parser.add_argument("--report-dir", type=Path, default=Path("build/conformance/autobahn"),
                        help="where kosoku's report and summary.json go [default: %(default)s]")
    parser.add_argument("--fulmen-args", default="",
                        help="extra fulmen arguments, one shell-quoted string "
                             '(--fulmen-args="--loop asyncio")')
    parser.add_argument("--uvicorn-args", default="", help="extra uvicorn arguments, likewise")
    parser.add_argument("--uvicorn-ws", default="auto",
                        choices=("auto", "websockets", "websockets-sansio", "wsproto"),
                        help="Uvicorn's WebSocket implementation [default: %(default)s]")
    parser.add_argument("--parallel", "-j", type=int, default=2,
                        help="cases run at once [default: %(default)s]")
    parser.add_argument("--case-timeout", type=float, default=DEFAULT_CASE_TIMEOUT,
                        help="seconds before a case without a verdict is abandoned as TIMEOUT; "
                             f"group 9 gets at least {GROUP9_CASE_TIMEOUT:g}s and cases with their own "
                             f"deadline (9.7, 9.8, 12, 13) that deadline + {WAITSECS_MARGIN:g}s "
                             "[default: %(default)s]")
    parser.add_argument("--total-timeout", type=float, default=0,
                        help="seconds for the whole run; cases not started by then are NOT RUN "
                             "(0: no limit) [default: %(default)s]")
    parser.add_argument("--ready-timeout", type=float, default=30.0,
                        help="seconds to wait for the server's listening log line [default: %(default)s]")
    args = parser.parse_args(argv)
    if args.parallel < 1 or args.case_timeout <= 0:
        parser.error("--parallel and --case-timeout must be positive")

    try:
        import kosoku
        from kosoku.cases import CASES, GROUPS
    except ImportError as exc:
        print(f"autobahn: cannot import kosoku ({exc}); install the dev requirements: "
              f"{sys.executable} -m pip install -r requirements-dev.txt", file=sys.stderr)
        return 2
    try:
        groups, patterns = parse_selection(args.cases, {int(g) for g in GROUPS})
        selected = select_cases(CASES, groups, patterns)
    except ValueError as exc:
        parser.error(str(exc))

    try:
        server, port = start_server(args.server, args)
    except RuntimeError as exc:
        print(f"autobahn: {exc}", file=sys.stderr)
        return 2
    url = f"ws://127.0.0.1:{port}/"
    print(f"autobahn: {len(selected)} cases against {args.server} at {url} "
          f"(up to {args.parallel} at once)\n  {display_command(server.command)}", flush=True)
    try:
        run = asyncio.run(run_cases(kosoku, CASES, url, selected, args, server))
    finally:
        exit_code = server.stop()
        args.report_dir.mkdir(parents=True, exist_ok=True)
        (args.report_dir / "server.log").write_text("\n".join(server.lines) + "\n")

    meta = {"server": args.server, "command": server.command, "selection": args.cases,
            "server_exit_code": exit_code, "kosoku_version": importlib.metadata.version("kosoku")}
    write_reports(run, args.report_dir, meta)

    failing = [o for o in run.outcomes if not o.passed]
    print()
    print(summary_table(run))
    print(f"\n{len(run.outcomes) - len(failing)} of {len(run.outcomes)} cases passed "
          f"(behavior OK/NON-STRICT/INFORMATIONAL with a clean close); "
          f"report: {args.report_dir / 'index.html'}")
    # Not a verdict (Uvicorn logs every invalid UTF-8 frame of group 6 as an ERROR), but an app
    # exception or a server-side error is worth a look next to the case results.
    errors = sum(bool(re.search(r"\bERROR\b|Traceback", line)) for line in server.lines)
    if errors:
        print(f"note: {errors} ERROR/Traceback lines in the server log: {args.report_dir / 'server.log'}")
    if failing:
        print(f"\n{len(failing)} cases not acceptable:")
        for o in failing:
            print(f"  {o.case_id}: {o.explain()}")
    code = 1 if failing else 0
    if run.abandoned:
        # A case cancelled at its deadline leaves kosoku's Rust task behind (cancelling the
        # awaitable does not abort it); it ends once the server is gone, but if one is still
        # alive when the interpreter finalizes, the extension aborts the process (SIGABRT) and
        # the exit status would no longer say "cases failed". Everything is written: leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
