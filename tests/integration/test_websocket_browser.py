"""WebSocket as a real browser speaks it: headless Chromium (Debian's chromium package) loads a
page from a Starlette app (apps/asgi_ws_browser.py) whose script opens a WebSocket back to the
server, sends text, non-ASCII text, an empty text, a binary ArrayBuffer and a ~100 KB text, checks
each echo, closes, and POSTs what it saw to /result. The test polls GET /result and checks the
echoes against its own copy of the payloads, the subprotocol and extension the browser saw
negotiated (permessage-deflate, which Chromium always offers), and a clean 1000 close on both sides.

The server under test is Fulmen, or Uvicorn with FULMEN_TEST_ASGI_SERVER=uvicorn (conftest.py).
A missing chromium is a failure, not a skip: `make deps` installs it, and so does CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from rawhttp import wait_until

# The page's payloads (apps/asgi_ws_browser.py, there as JavaScript), in send order.
TEXT = "h\u00e9llo w\u00f6rld \u2014 \u4f60\u597d \U0001f389"  # 2-, 3- and 4-byte UTF-8
BINARY = bytes(i % 256 for i in range(1024))
BIG = "".join(f"{i:05d}," for i in range(17100))  # 102,600 bytes: several TCP segments, and a
MESSAGES = ["hello", TEXT, "", BINARY, BIG]        # size that many servers fragment or compress

# Cold start of Chromium is 1-2 s here; the margin is for a loaded CI machine or a sanitizer run.
RESULT_TIMEOUT = 60.0

# Flags that keep a headless Chromium quiet and local: as root it only runs without its sandbox;
# no GPU in CI; a fresh profile each run; and nothing that talks to the network on its own
# (updates, sync, safe browsing, metrics...) — the host resolver fails every name but 127.0.0.1
# (the rule applies to address literals too), so even a feature left on stays on this machine.
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
    "--disable-client-side-phishing-detection", "--disable-breakpad", "--metrics-recording-only",
    "--no-pings", "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
]


def expected_echo(message: str | bytes) -> dict:
    if isinstance(message, bytes):
        return {"type": "binary", "hex": message.hex(), "ok": True}
    return {"type": "text", "text": message, "ok": True}


def chromium_processes(sid: int, profile: Path) -> list[tuple[int, str]]:
    """(pid, command name) of every live process of one Chromium: those in its session, and those
    naming its profile directory on their command line, which catches the crash handlers (they
    detach into sessions of their own, but keep their database under our HOME). Zombies are dead,
    so they are left out."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:  # exited while we looked
            continue
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2:].split()[:4]
        if state != "Z" and (int(session) == sid or str(profile) in cmdline):
            found.append((int(entry.name), comm))
    return found


class Chromium:
    """A headless Chromium on one URL, in a session of its own so that every process it forks
    (zygote, renderer, GPU, network service...) can be found and killed with it."""

    def __init__(self, url: str, profile: Path, log: Path) -> None:
        binary = shutil.which("chromium")
        if binary is None:
            pytest.fail("chromium is not installed: `make deps` installs it (the Debian package "
                        "chromium, in the Makefile's APT_PACKAGES; CI installs it the same way)")
        env = browser_env()  # HOME and XDG dirs go to the throwaway profile
        env.update(HOME=str(profile), XDG_CONFIG_HOME=str(profile / "config"),
                   XDG_CACHE_HOME=str(profile / "cache"))
        self.log = log
        self.profile = profile
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile / 'data'}", url],
                                     stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)

    @property
    def output(self) -> str:
        """The end of Chromium's log, less its complaints that there is no D-Bus (there never is
        in CI, and they would bury anything that matters)."""
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(line for line in lines if "dbus" not in line)[-4000:]

    def kill(self) -> list[tuple[int, str]]:
        """Ends the whole session; returns the processes still alive after that (should be none)."""
        sid = self.proc.pid
        # SIGKILL to the process group: the browser has nothing to save, and a SIGTERM'd Chromium
        # may outlive its children or the other way round. Whatever is left outside the group
        # (the crash handlers) is killed one by one.
        try:
            os.killpg(sid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid, _ in chromium_processes(sid, self.profile):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        finally:
            self._log_file.close()
        # Killed processes disappear (or turn zombie) a moment later: wait for that, bounded.
        wait_until(lambda: not chromium_processes(sid, self.profile), timeout=10, interval=0.05)
        return chromium_processes(sid, self.profile)


def shortened(value):
    """`value` with long strings cut, for failure messages (the big echo is 100 KB)."""
    if isinstance(value, dict):
        return {k: shortened(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shortened(v) for v in value]
    if isinstance(value, str) and len(value) > 80:
        return f"{value[:40]}...({len(value)} chars)"
    return value


def browser_env() -> dict[str, str]:
    """Our environment without the sanitizer run's LD_PRELOAD and options: the browser is a tool
    here, not under test, and with libasan preloaded Chromium hangs (even for --version)."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}


def chromium_version() -> str:
    binary = shutil.which("chromium")
    if binary is None:
        return "not installed"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, env=browser_env())
    return out.stdout.strip()


def test_browser_websocket_echo(asgi_server, tmp_path):
    srv = asgi_server("asgi_ws_browser:app")
    started = time.monotonic()
    browser = Chromium(srv.url + "/", tmp_path / "profile", tmp_path / "chromium.log")
    last: dict = {}

    def result_or_exit():
        # Done when the browser has posted its report and the server has seen the close (the
        # report is posted after the browser's close event, which may come before the server's
        # receive() returns the disconnect) — or when Chromium died, which no waiting will fix.
        status, _, body = srv.request("GET", "/result")
        last.update(json.loads(body))
        if status == 200 and last["server"]["disconnect_code"] is not None:
            return True
        return browser.proc.poll() is not None

    try:
        wait_until(result_or_exit, timeout=RESULT_TIMEOUT, interval=0.05)
        elapsed = time.monotonic() - started
    finally:
        stray = browser.kill()
    assert not stray, f"Chromium processes survived the kill: {stray}"

    context = (f"{chromium_version()}, {elapsed:.2f} s after launch\nresult: {json.dumps(shortened(last))}\n"
               f"chromium output:\n{browser.output}\nserver output:\n{srv.output}")
    assert "browser" in last, f"the page posted no result within {RESULT_TIMEOUT} s\n{context}"
    report, seen = last["browser"], last["server"]

    # The browser's side: no error, every echo exact and of the type sent, and a clean close.
    assert report["errors"] == [], context
    assert report["echoes"] == [expected_echo(m) for m in MESSAGES], context
    assert report["ok"] is True, context
    assert report["close"]["code"] == 1000 and report["close"]["wasClean"] is True, context
    # The handshake as the browser saw it: the server picked the second offered subprotocol, and
    # accepted Chromium's permessage-deflate offer (parameters may follow the name).
    assert report["protocol"] == "echo.v1", context
    assert report["extensions"].split(";")[0].strip() == "permessage-deflate", context

    # The server's side: one connection, the offer as sent, every message whole and in order.
    assert seen["connections"] == 1, context
    assert seen["offered_subprotocols"] == ["unknown.v0", "echo.v1"], context
    assert "permessage-deflate" in seen["offered_extensions"], context
    assert seen["received"] == [{"type": "binary" if isinstance(m, bytes) else "text", "length": len(m)}
                                for m in MESSAGES], context
    assert seen["disconnect_code"] == 1000, context
