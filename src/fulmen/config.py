"""The options of Fulmen: one table drives the command line, FULMEN_* variables and validation.

Precedence: command line, then the environment (FULMEN_<NAME>), then the default. Values are
parsed here rather than by argparse so that a bad value gives one line naming where it came
from (`--port 70000` or `FULMEN_PORT=abc`) and exits 1, the same way from every source.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from fulmen import FulmenError, __version__

ENV_PREFIX = "FULMEN_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
INTERFACES = ("auto", "wsgi", "asgi")
LOOPS = ("auto", "asyncio", "uvloop")
LIFESPANS = ("auto", "on", "off")
WS_MODES = ("auto", "on", "off")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class ConfigError(FulmenError, ValueError):
    """An option value that is invalid (a ValueError too, for run() callers)."""


@dataclass(frozen=True)
class Option:
    name: str  # Python name; the flag is --name-with-dashes, the variable FULMEN_NAME
    type: type  # str, int, float or bool
    default: Any
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    positional: bool = False
    takes_value: bool = False  # a bool given as "--flag true|false" (Uvicorn's spelling), not --flag/--no-flag
    auto: bool = False  # an int option that also accepts "auto", read as 0
    multiple: bool = False  # a str option that may be repeated (FULMEN_X: comma-separated); a tuple

    @property
    def flag(self) -> str:
        return self.name if self.positional else "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("app", str, None, 'the WSGI or ASGI application, as "module:attribute" (e.g. "myproject.asgi:application")',
           metavar="APP", positional=True),
    Option("host", str, "127.0.0.1", "bind to this address (0.0.0.0 for all IPv4 interfaces, :: for IPv6)"),
    Option("port", int, 8000, "bind to this TCP port; 0 picks a free port", min=0, max=65535),
    Option("uds", str, None, "bind to this Unix domain socket path instead of --host/--port", metavar="PATH"),
    Option("fd", int, None, "serve on this already-listening inherited socket instead of binding",
           metavar="N", min=0),
    Option("interface", str, "auto", "application interface; auto tells WSGI from ASGI 3 and ASGI 2 apps",
           choices=INTERFACES),
    Option("loop", str, "auto", "ASGI only: the asyncio event loop; auto uses uvloop when it is installed",
           choices=LOOPS),
    Option("lifespan", str, "auto", "ASGI only: run the lifespan protocol (startup/shutdown); auto goes on "
           "without it if the app does not support it, on makes a startup failure fatal", choices=LIFESPANS),
    Option("threads", int, 1, "WSGI only: threads running the app; 1 runs it on the event loop thread "
           "(fastest); ignored, with a warning, for ASGI apps, which run on the event loop", metavar="N", min=1),
    Option("root_path", str, "", "SCRIPT_NAME prefix the app is mounted under (behind a proxy)",
           metavar="PATH"),
    Option("app_dir", str, ".", "directory put first on sys.path before importing APP", metavar="DIR"),
    Option("factory", bool, False, "APP is a factory: call it with no arguments to get the application"),
    Option("log_level", str, "info", "error log level", choices=LOG_LEVELS),
    Option("access_log", bool, True, "write one line per request to stdout"),
    Option("timeout_keep_alive", float, 5.0, "close idle keep-alive connections after this many seconds",
           metavar="SECONDS", min=0),
    Option("backlog", int, 2048, "maximum number of pending connections (listen backlog)", metavar="N",
           min=1),
    Option("limit_request_line", int, 8190, "maximum bytes of the request line (0-8190); 0 = unlimited",
           metavar="BYTES", min=0, max=8190),
    Option("limit_request_fields", int, 100, "maximum number of header fields (0-32768); 0 = 32768",
           metavar="N", min=0, max=32768),
    Option("limit_request_field_size", int, 8190, "maximum bytes of one header field; 0 = unlimited",
           metavar="BYTES", min=0),
    Option("limit_request_body", int, 0, "maximum bytes of a request body (answered with 413); 0 = unlimited",
           metavar="BYTES", min=0),
    Option("graceful_timeout", float, 30.0, "on shutdown, wait this many seconds for in-flight requests",
           metavar="SECONDS", min=0),
    Option("ws", str, "auto", "ASGI only: WebSocket support, built into the engine (auto = on); off serves "
           "Upgrade requests as plain HTTP", choices=WS_MODES),
    Option("ws_max_size", int, 16 * 1024 * 1024, "ASGI only: largest WebSocket message in bytes; a larger one "
           "closes the connection with 1009", metavar="BYTES", min=1),
    Option("ws_ping_interval", float, 20.0, "ASGI only: ping each WebSocket this often; 0 = never",
           metavar="SECONDS", min=0),
    Option("ws_ping_timeout", float, 20.0, "ASGI only: close a WebSocket (1011) whose pong takes longer than "
           "this; 0 = wait forever", metavar="SECONDS", min=0),
    Option("ws_per_message_deflate", bool, True, "ASGI only: offer WebSocket compression (permessage-deflate) "
           "to clients that ask for it", metavar="BOOL", takes_value=True),
    # Workers and their supervisor (src/fulmen/supervisor.py, docs/deployment.md).
    Option("workers", int, None, "run a supervisor process with this many worker processes; 0 or auto = "
           "one per CPU; without it Fulmen is a single process", metavar="N|auto", min=0, auto=True),
    Option("preload", bool, False, "with --workers: import the app once in the supervisor before forking "
           "the workers (saves memory; HUP then restarts the workers with the same code)"),
    Option("timeout", float, 30.0, "with --workers: kill and replace a worker whose event loop has not run "
           "for this many seconds (its Python stack is logged first); 0 = never", metavar="SECONDS", min=0),
    Option("max_requests", int, 0, "with --workers: restart a worker (gracefully, its replacement started "
           "first) after this many requests; 0 = never", metavar="N", min=0),
    Option("max_requests_jitter", int, 0, "with --max-requests: add a random 0..N to each worker's limit, "
           "so that workers do not all restart at once", metavar="N", min=0),
    Option("max_rss", int, 0, "with --workers: restart a worker (gracefully, its replacement started first) "
           "whose resident memory exceeds this many MiB; 0 = never", metavar="MIB", min=0),
    Option("reload", bool, False, "development: restart the worker when a watched file changes (inotify; "
           "a supervisor with one worker, the new one started before the old one stops)"),
    Option("reload_dir", str, None, "with --reload: watch this directory (repeatable; default: the current "
           "directory)", metavar="DIR", multiple=True),
    Option("reload_include", str, None, "with --reload: also watch files matching this glob (repeatable; "
           "*.py always, unless excluded)", metavar="GLOB", multiple=True),
    Option("reload_exclude", str, None, "with --reload: ignore files and directories matching this glob "
           "(repeatable; default: .*, .py[cod], .sw.*, ~*)", metavar="GLOB", multiple=True),
)
BY_NAME = {o.name: o for o in OPTIONS}


def convert(opt: Option, value: Any, source: str) -> Any:
    """Turn `value` (a string from the CLI/environment, or a Python value from run()) into the
    option's type and check it. `source` names it in errors, e.g. "--port 70000"."""
    if value is None and opt.default is None:
        return None
    if opt.multiple:
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) and v for v in items):
            raise ConfigError(f"invalid {source}: expected one or more non-empty strings")
        return tuple(items)
    try:
        if opt.type is bool:
            if isinstance(value, str):
                if value.strip().lower() not in _TRUE + _FALSE:
                    raise ValueError("expected true/false (or 1/0, yes/no, on/off)")
                value = value.strip().lower() in _TRUE
            elif not isinstance(value, bool):
                raise ValueError("expected True or False")
        elif opt.type in (int, float):
            kind = "an integer" if opt.type is int else "a number"
            if opt.auto:
                kind += ' or "auto"'
                if isinstance(value, str) and value.strip().lower() == "auto":
                    value = "0"
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError(f"expected {kind}")
            if opt.type is int and isinstance(value, float):
                raise ValueError(f"expected {kind}")
            try:
                value = opt.type(value.strip() if isinstance(value, str) else value)
            except (ValueError, OverflowError):
                raise ValueError(f"expected {kind}") from None
            if not math.isfinite(value):
                raise ValueError("expected a finite number")
            if opt.min is not None and opt.max is not None and not opt.min <= value <= opt.max:
                raise ValueError(f"must be between {opt.min:g} and {opt.max:g}")
            if opt.min is not None and value < opt.min:
                raise ValueError(f"must be at least {opt.min:g}")
        elif not isinstance(value, str):
            raise ValueError("expected a string")
        if opt.choices and value not in opt.choices:
            raise ValueError("choose one of " + ", ".join(opt.choices))
    except ValueError as exc:
        raise ConfigError(f"invalid {source}: {exc}") from None
    return value


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        # argparse would print usage and exit 2; we want the same one-line "Error:" and exit 1.
        raise ConfigError(f"{message} (see fulmen --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fulmen",
        description="Serve a Python WSGI or ASGI application with Fulmen's C++ HTTP engine.",
        epilog="Every option can also be set with an environment variable (shown as [env: ...]); "
        "the command line wins over the environment.",
    )
    for opt in OPTIONS:
        shown = "" if opt.default in (None, "") else f" [default: {_show(opt.default)}]"
        help_text = f"{opt.help}{shown} [env: {opt.env}]"
        if opt.positional:
            parser.add_argument(opt.name, nargs="?", metavar=opt.metavar, help=help_text)
        elif opt.type is bool and opt.takes_value:
            parser.add_argument(opt.flag, dest=opt.name, default=None, help=help_text, metavar=opt.metavar)
        elif opt.multiple:
            parser.add_argument(opt.flag, dest=opt.name, default=None, action="append", help=help_text,
                                metavar=opt.metavar)
        elif opt.type is bool:
            # --access-log/--no-access-log: None (not given) lets the environment decide.
            parser.add_argument(opt.flag, dest=opt.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            # Parsed as strings; convert() checks them so errors name the source and exit 1.
            parser.add_argument(opt.flag, dest=opt.name, default=None, help=help_text,
                                metavar=opt.metavar or ("{" + ",".join(opt.choices) + "}" if opt.choices else None))
    parser.add_argument("--version", action="version", version=f"fulmen {__version__}")
    return parser


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """Options from the command line and the environment, checked. Raises ConfigError."""
    args = vars(build_parser().parse_args(argv))
    cfg: dict[str, Any] = {}
    for opt in OPTIONS:
        cli = args[opt.name]
        if cli is not None:
            shown = ("--" if cli else "--no-") + opt.flag[2:] if opt.type is bool and not opt.takes_value else (
                cli if opt.positional else f"{opt.flag} {cli}")
            cfg[opt.name] = convert(opt, cli, shown)
        elif environ.get(opt.env):  # set but empty counts as unset, as in Click
            cfg[opt.name] = convert(opt, environ[opt.env], f"{opt.env}={environ[opt.env]}")
        else:
            cfg[opt.name] = opt.default
    return check(cfg)


def from_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options given to fulmen.run(): defaults plus the given values, checked."""
    unknown = sorted(set(options) - set(BY_NAME))
    if unknown:
        raise TypeError(f"run() got unknown option(s): {', '.join(unknown)}")
    cfg = {opt.name: opt.default for opt in OPTIONS}
    for name, value in options.items():
        cfg[name] = convert(BY_NAME[name], value, f"{name}={value!r}")
    return check(cfg, from_cli=False)


def check(cfg: dict[str, Any], from_cli: bool = True) -> dict[str, Any]:
    """Checks that involve several options."""
    if from_cli and not cfg["app"]:
        raise ConfigError(f'no application given: pass APP as "module:attribute" or set {ENV_PREFIX}APP')
    if cfg["uds"] is not None and cfg["fd"] is not None:
        raise ConfigError("--uds and --fd both given: choose one way to get the listening socket")
    if cfg["reload"]:
        if cfg["workers"] is not None and cfg["workers"] != 1:
            raise ConfigError("--reload and --workers both given: --reload runs one worker; drop one of them")
        if cfg["preload"]:
            raise ConfigError("--reload and --preload both given: a reload must import the app again; "
                              "drop --preload")
        cfg["workers"] = 1
    else:
        for name in ("reload_dir", "reload_include", "reload_exclude"):
            if cfg[name]:
                raise ConfigError(f"{BY_NAME[name].flag} needs --reload")
    if cfg["workers"] is None:
        for name in ("preload", "max_requests", "max_requests_jitter", "max_rss"):
            if cfg[name]:
                raise ConfigError(f"{BY_NAME[name].flag} needs a supervisor: add --workers N "
                                  "(--workers 1 for a single supervised worker)")
    elif cfg["workers"] == 0:
        cfg["workers"] = os.cpu_count() or 1
    return cfg
