"""Fulmen: a C++20 HTTP server for Python WSGI and ASGI applications.

Importing this package stays cheap (no native engine, no sockets) so that `fulmen --help` and
`fulmen --version` answer instantly; the engine is imported only when a server starts.
"""

from __future__ import annotations

from typing import Any, Callable

__version__ = "0.1.0"
__all__ = ["FulmenError", "run", "__version__"]


class FulmenError(Exception):
    """A problem the user can fix (bad option, app that does not import, busy port...).

    str(error) is one line; `detail` is extra text to show before it (e.g. the traceback of an
    exception raised by the user's own code), or "". `exit_code` is what the command exits with.
    """

    exit_code = 1

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


def run(app: Callable[..., Any] | str, **options: Any) -> None:
    """Serve `app` (a WSGI or ASGI callable, or a "module:attr" string) until SIGINT/SIGTERM.

    `options` are the command-line options with underscores (port=0, threads=4,
    access_log=False, ...). Environment variables are not read: the caller says what it wants.
    Raises FulmenError (ValueError for invalid options) on problems the user can fix.
    """
    from fulmen import config, server

    cfg = config.from_kwargs(options)
    cfg["app"] = app
    server.serve(cfg)
