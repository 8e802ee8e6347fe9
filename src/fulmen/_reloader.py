"""--reload: watch source files with inotify (through ctypes: no dependency, no polling).

The supervisor selects on Watcher.fd and calls Watcher.changed() when it is readable; what counts
as a change follows Uvicorn's --reload-include/--reload-exclude: a file matching an include glob
(*.py by default) and no exclude glob (.*, .py[cod], .sw.*, ~* by default). A glob given to one
list is removed from the other's defaults, so `--reload-include '.env'` works. Excluded
directories (and __pycache__) are not watched at all.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from pathlib import Path, PurePath
from typing import Iterable

from fulmen import FulmenError

DEFAULT_INCLUDES = ("*.py",)
DEFAULT_EXCLUDES = (".*", ".py[cod]", ".sw.*", "~*")
_SKIP_DIRS = ("__pycache__",)

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_Q_OVERFLOW = 0x4000
_IN_ISDIR = 0x40000000
_IN_ONLYDIR = 0x01000000
_MASK = _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


def resolve_patterns(includes: Iterable[str] | None, excludes: Iterable[str] | None) -> tuple[list[str], list[str]]:
    """Uvicorn's rule: user globs add to the defaults, and remove the same glob from the other list."""
    inc, exc = list(includes or ()), list(excludes or ())
    return ([p for p in DEFAULT_INCLUDES if p not in exc] + inc,
            [p for p in DEFAULT_EXCLUDES if p not in inc] + exc)


class Watcher:
    def __init__(self, dirs: Iterable[str] | None, includes: Iterable[str] | None,
                 excludes: Iterable[str] | None) -> None:
        self.includes, self.excludes = resolve_patterns(includes, excludes)
        self.dirs = [Path(d).resolve() for d in (dirs or [os.getcwd()])]
        for d in self.dirs:
            if not d.is_dir():
                raise FulmenError(f"--reload-dir {d}: not a directory")
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0:
            raise FulmenError(f"--reload: inotify_init1 failed: {os.strerror(ctypes.get_errno())}")
        self._paths: dict[int, Path] = {}  # watch descriptor -> directory
        for d in self.dirs:
            self._watch_tree(d)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _excluded_dir(self, path: Path) -> bool:
        return path.name in _SKIP_DIRS or any(path.match(p) for p in self.excludes)

    def _watch_tree(self, top: Path) -> None:
        for root, subdirs, _ in os.walk(top):
            subdirs[:] = [s for s in subdirs if not self._excluded_dir(Path(root, s))]
            self._watch(Path(root))

    def _watch(self, path: Path) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), _MASK | _IN_ONLYDIR)
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC:
                raise FulmenError("--reload: the inotify watch limit is reached; raise "
                                  "fs.inotify.max_user_watches or narrow --reload-dir")
            return  # vanished or unreadable: nothing to watch
        self._paths[wd] = path

    def matches(self, path: PurePath) -> bool:
        if not any(path.match(p) for p in self.includes):
            return False
        return not any(path.match(p) for p in self.excludes)

    def changed(self) -> list[str]:
        """Reads the pending events; returns the changed files that matter (may be empty)."""
        out: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size: pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    out.append("(many files)")
                    continue
                base = self._paths.get(wd)
                if base is None or not name:
                    continue
                path = base / os.fsdecode(name)
                if mask & _IN_ISDIR:
                    if mask & (_IN_CREATE | _IN_MOVED_TO) and not self._excluded_dir(path):
                        self._watch_tree(path)  # a new package: watch it, and count what it holds
                        out.extend(str(p) for p in path.rglob("*") if self.matches(p))
                    continue
                if self.matches(path):
                    out.append(str(path))
