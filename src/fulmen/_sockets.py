"""Bind the listening sockets in Python (the engine never binds): TCP, Unix sockets, inherited fds
and systemd socket activation.

Binding here keeps the OS-facing errors (port in use, permission denied, bad host) in one place
with messages that say what to do, and lets a supervisor hand us a socket with --fd.

Which sockets a server listens on (docs/proxies.md): every --bind, plus --uds and --fd, plus the
sockets systemd passed (LISTEN_FDS); --host/--port only when none of those gave one.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass

from fulmen import FulmenError


@dataclass
class Listener:
    sock: socket.socket
    server_name: str  # SERVER_NAME for requests on this socket
    server_port: int  # SERVER_PORT (0 for Unix sockets)
    is_unix: bool
    url: str  # for the "Listening on" line
    unlink_path: str | None = None  # a Unix socket file we created and remove on close

    def engine_tuple(self) -> tuple[int, str, int, bool]:
        return (self.sock.fileno(), self.server_name, self.server_port, self.is_unix)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:  # already closed by the engine: the socket is gone either way
            pass
        if self.unlink_path:
            try:
                if stat.S_ISSOCK(os.lstat(self.unlink_path).st_mode):
                    os.unlink(self.unlink_path)
            except OSError:
                pass


SD_LISTEN_FDS_START = 3  # systemd passes sockets from fd 3 on (sd_listen_fds(3))


class Listeners(list):
    """The listeners of one server, in the order the engine gets them (its listener index)."""

    def engine_tuples(self) -> list[tuple[int, str, int, bool]]:
        return [li.engine_tuple() for li in self]

    def close(self) -> None:
        for li in self:
            li.close()


def bind(cfg: dict, environ=os.environ) -> Listeners:
    """Every listening socket the options ask for. On an error, those already bound are closed."""
    out = Listeners()
    try:
        uds_mode = cfg.get("uds_mode")
        for kind, *where in cfg.get("bind", ()):
            if kind == "unix":
                out.append(bind_unix(where[0], cfg["backlog"], uds_mode))
            elif kind == "fd":
                out.append(from_fd(where[0], flag="--bind fd://"))
            else:
                out.append(bind_tcp(where[0], where[1], cfg["backlog"], flag="--bind"))
        if cfg["uds"] is not None:
            out.append(bind_unix(cfg["uds"], cfg["backlog"], uds_mode))
        if cfg["fd"] is not None:
            out.append(from_fd(cfg["fd"]))
        out.extend(systemd_listeners(environ))
        if not out:
            out.append(bind_tcp(cfg["host"], cfg["port"], cfg["backlog"]))
        fds = [li.sock.fileno() for li in out]
        if len(set(fds)) != len(fds):
            raise FulmenError("the same descriptor is given twice (--fd / --bind fd:// / LISTEN_FDS): "
                              "pass each socket once")
    except BaseException:
        out.close()
        raise
    return out


def systemd_listeners(environ=os.environ) -> list[Listener]:
    """Sockets passed by systemd socket activation (sd_listen_fds(3)): LISTEN_FDS sockets from fd 3
    on, when LISTEN_PID is this process. Like sd_listen_fds(unset_environment=1), the variables
    are removed either way, so that child processes do not take the sockets for theirs."""
    pid, count, names = (environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"))
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(key, None)
    if pid is None or count is None:
        return []
    if not pid.strip().isdigit() or int(pid) != os.getpid():
        return []  # meant for another process (e.g. our parent): not ours to use
    if not count.strip().isdigit():
        raise FulmenError(f"LISTEN_FDS={count!r} is not a number of descriptors; "
                          "is systemd socket activation set up right?")
    n = int(count)
    labels = names.split(":") if names else []
    out = []
    for i in range(n):
        fd = SD_LISTEN_FDS_START + i
        try:
            li = from_fd(fd, flag="LISTEN_FDS: fd ")
        except FulmenError:
            for done in out:
                done.close()
            raise
        os.set_inheritable(fd, False)  # sd_listen_fds sets FD_CLOEXEC too
        label = labels[i] if i < len(labels) and labels[i] else None
        li.url = f"{li.url} from systemd" + (f" ({label})" if label else "")
        out.append(li)
    return out


def bind_tcp(host: str, port: int, backlog: int, flag: str = "--host") -> Listener:
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # "[::1]" -> "::1"
    try:
        infos = socket.getaddrinfo(name or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise FulmenError(f"cannot resolve {flag} {host!r}: {exc}; use an IP address or a resolvable name") from None
    # Like socket.create_server: the first address that binds wins (for "localhost" that is one
    # of 127.0.0.1/::1; use an explicit address to choose).
    error: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart during TIME_WAIT
            if family == socket.AF_INET6:
                # As socket.create_server: [::] is IPv6 only, so that --bind 0.0.0.0:P and
                # --bind [::]:P can both listen (with the system default, bindv6only=0, the second
                # would fail with EADDRINUSE).
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            error = error or exc
            continue
        real_port = sock.getsockname()[1]  # the kernel's choice for --port 0
        shown = f"[{addr[0]}]" if family == socket.AF_INET6 else addr[0]
        # SERVER_NAME is the host as given (0.0.0.0 included), like Gunicorn.
        return Listener(sock, name, real_port, False, f"http://{shown}:{real_port}")
    assert error is not None
    raise _bind_error(error, f"{name}:{port}" if ":" not in name else f"[{name}]:{port}", unix=False)


def bind_unix(path: str, backlog: int, mode: int | None = None) -> Listener:
    if not path:
        raise FulmenError("--uds needs a path")
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        if mode is not None:
            # Before listen(): nobody can connect while the permissions are still the umask's.
            os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise _bind_error(exc, path, unix=True) from None
    return Listener(sock, path, 0, True, f"unix:{path}", unlink_path=path)


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a server that died is removed; anything else is left alone."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _bind_error(exc, path, unix=True) from None
    if not stat.S_ISSOCK(mode):
        raise FulmenError(f"--uds {path} exists and is not a socket; refusing to replace it, choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nothing accepts on it: stale
        return
    except OSError as exc:
        raise _bind_error(exc, path, unix=True) from None
    finally:
        probe.close()
    raise FulmenError(f"another server is listening on unix:{path} — stop it or choose another --uds path")


def from_fd(fd: int, flag: str = "--fd ") -> Listener:
    """Wrap an inherited socket (systemd socket activation, a supervisor...). It must already be
    a listening stream socket: we do not bind or listen on someone else's socket."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise FulmenError(f"{flag}{fd}: {exc.strerror}; is the descriptor passed to this process?") from None
    if not stat.S_ISSOCK(mode):
        raise FulmenError(f"{flag}{fd} is not a socket")
    sock = socket.socket(fileno=fd)
    # Ours from now on: processes the app starts must not inherit it (and keep the port open
    # after Fulmen exits). Workers of a supervisor get it by fork, which ignores this flag.
    os.set_inheritable(fd, False)
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise FulmenError(f"{flag}{fd} is not a stream (TCP or Unix stream) socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise FulmenError(f"{flag}{fd} is not listening; call listen() on it before passing it")
    if sock.family == socket.AF_UNIX:
        path = sock.getsockname()
        path = path.decode(errors="replace") if isinstance(path, bytes) else path
        return Listener(sock, path, 0, True, f"fd://{fd} (unix:{path})")
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
    return Listener(sock, host, port, False, f"fd://{fd} (http://{shown}:{port})")


def _bind_error(exc: OSError, where: str, unix: bool) -> FulmenError:
    what = "--uds path" if unix else "--port"
    hints = {
        errno.EADDRINUSE: f"is another server running? choose another {what}",
        errno.EACCES: (
            "choose a --uds path in a directory you can write to"
            if unix
            else "ports below 1024 need root or CAP_NET_BIND_SERVICE; choose a --port above 1023"
        ),
        errno.EPERM: f"not permitted here; choose another {what}",
        errno.EADDRNOTAVAIL: "is --host an address of this machine? 0.0.0.0 listens on all of them",
        errno.ENOENT: "the directory does not exist; create it or choose another --uds path",
        errno.ENOTDIR: "a component of the path is not a directory; choose another --uds path",
        errno.EROFS: "the file system is read-only; choose another --uds path",
    }
    hint = hints.get(exc.errno or 0, f"choose another {what}")
    if exc.errno is None:  # e.g. "AF_UNIX path too long"
        return FulmenError(f"{exc}: {where} — choose a shorter --uds path" if unix else f"{exc}: {where}")
    return FulmenError(f"[Errno {exc.errno}] {exc.strerror}: {where} — {hint}")
