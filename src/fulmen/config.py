"""The options of Fulmen: one table drives the command line, FULMEN_* variables, the TOML
configuration file (--config), --print-config and validation.

Precedence: command line, then the environment (FULMEN_<NAME>), then the configuration file,
then the default. Values are parsed here rather than by argparse so that a bad value gives one
line naming where it came from (`--port 70000`, `FULMEN_PORT=abc` or `fulmen.toml: port = "abc"`)
and exits 1, the same way from every source.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from fulmen import FulmenError, __version__

ENV_PREFIX = "FULMEN_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
INTERFACES = ("auto", "wsgi", "asgi")
LOOPS = ("auto", "asyncio", "uvloop")
LIFESPANS = ("auto", "on", "off")
WS_MODES = ("auto", "on", "off")
# Gunicorn's default access_log_format (the Apache combined format); the engine's default too.
ACCESS_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
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
    multiple: bool = False  # repeatable flag (a tuple); its variable holds several (split_list)
    alt_env: str | None = None  # a second variable other servers read, below FULMEN_<NAME>
    parse: Any = None  # str -> value, raising ValueError("what is wrong; how to fix it")
    unparse: Any = None  # parsed value -> what a config file holds (--print-config)
    # Extra validation of a converted value: returns None, or what is wrong (a ConfigError names
    # the source and the value around it).
    check: Callable[[Any], str | None] | None = None

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
    # ---- sockets, concurrency and proxies (docs/proxies.md) ----
    Option("bind", str, (), "listen on this address, repeatable: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N; "
           "replaces --host/--port (FULMEN_BIND: several separated by spaces or commas)", metavar="ADDRESS",
           multiple=True, parse=lambda v: parse_bind(v), unparse=lambda v: [format_bind(b) for b in v]),
    Option("uds_mode", str, None, "permissions of the Unix sockets Fulmen creates, in octal (e.g. 660); "
           "default: from the umask", metavar="MODE", parse=lambda v: parse_mode(v),
           unparse=lambda v: f"{v:o}"),
    Option("limit_concurrency", int, None, "answer 503 and close once more than N connections are open",
           metavar="N", min=1),
    Option("proxy_headers", bool, False, "take the client address and scheme from the headers chosen "
           "with --forwarded-headers, sent by a trusted proxy (--forwarded-allow-ips)"),
    Option("forwarded_allow_ips", str, "127.0.0.1", "proxies trusted with --proxy-headers: comma-separated "
           "IPs and CIDR networks, unix for Unix-socket peers, or * for any (also read from "
           "FORWARDED_ALLOW_IPS)", metavar="IPS",
           alt_env="FORWARDED_ALLOW_IPS", parse=lambda v: parse_allow_ips(v), unparse=",".join),
    Option("forwarded_headers", str, "x-forwarded-for,x-forwarded-proto", "proxy headers believed with "
           "--proxy-headers, comma-separated: x-forwarded-for, x-forwarded-proto, x-forwarded-host, "
           "x-forwarded-port, or forwarded (RFC 7239) alone; your proxy must set or clear each one",
           metavar="LIST", parse=lambda v: parse_forwarded_headers(v), unparse=",".join),
    Option("proxy_protocol", bool, False, "every connection starts with a PROXY protocol v1 or v2 header "
           "(HAProxy, nginx proxy_protocol on): its client address is used, a connection without one is closed"),
    # ---- end of sockets, concurrency and proxies ----
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
    Option("access_log", bool, True, "write one line per request (to --access-logfile)"),
    Option("access_log_format", str, ACCESS_LOG_FORMAT, "access-log line: Gunicorn's atoms (%(h)s, %(r)s, "
           "%(D)s, %({header}i)s, ...; see docs/configuration.md) or json for one JSON object per line",
           metavar="FORMAT", check=lambda v: _check_access_log_format(v)),
    Option("access_logfile", str, "-", "file the access log is appended to; - is stdout; reopened on SIGUSR1",
           metavar="PATH"),
    Option("error_logfile", str, "-", "file the error log is appended to; - is stderr; reopened on SIGUSR1",
           metavar="PATH"),
    Option("log_config", str, None, "logging configuration file: .json or .yaml/.yml (dictConfig), anything "
           "else as logging.fileConfig; --log-level, when given, still sets fulmen.error's level", metavar="FILE"),
    Option("config", str, None, "TOML file of options (keys are the option names); the command line and "
           "FULMEN_* variables override it", metavar="FILE"),
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


def split_list(text: str) -> list[str]:
    """A list variable (FULMEN_BIND, FORWARDED_ALLOW_IPS): items separated by commas or whitespace."""
    return [item for item in re.split(r"[\s,]+", text) if item]


def _check_access_log_format(value: str) -> str | None:
    # The engine's own compiler, so the check is exactly what will run. Importing the engine here
    # is fine (this runs only when a format is given); without it the server fails later anyway.
    try:
        from fulmen import _core
    except ImportError:
        return None
    return _core.check_access_log_format(value)


def convert(opt: Option, value: Any, source: str) -> Any:
    """Turn `value` (a string from the CLI/environment, or a Python value from run()) into the
    option's type and check it. `source` names it in errors, e.g. "--port 70000"."""
    if value is None and opt.default is None:
        return None
    if opt.multiple:
        items = split_list(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, (str, tuple)) and v for v in items):
            raise ConfigError(f"invalid {source}: expected one or more non-empty strings")
        one = Option(opt.name, opt.type, None, opt.help, parse=opt.parse)
        return tuple(convert(one, item, source) for item in items)
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
        if opt.parse is not None:
            value = opt.parse(value)
        problem = opt.check(value) if opt.check else None
        if problem:
            raise ValueError(problem)
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


class Settings(dict):
    """The effective options (a plain dict to everyone who reads them) and, per option, where its
    value came from: "cli", "env", "file", "default" (or "run()" for fulmen.run's keywords)."""

    sources: dict[str, str]
    print_config: bool = False


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fulmen",
        description="Serve a Python WSGI or ASGI application with Fulmen's C++ HTTP engine.",
        epilog="Every option can also be set with an environment variable (shown as [env: ...]) and as a "
        "key of the --config file; the command line wins over the environment, which wins over the file.",
    )
    for opt in OPTIONS:
        shown = "" if opt.default in (None, "", ()) else f" [default: {_show(opt.default)}]"
        # argparse %-formats help texts: literal percent signs (access-log atoms) are doubled.
        help_text = f"{opt.help}{shown} [env: {opt.env}]".replace("%", "%%")
        if opt.positional:
            parser.add_argument(opt.name, nargs="?", metavar=opt.metavar, help=help_text)
        elif opt.type is bool and opt.takes_value:
            parser.add_argument(opt.flag, dest=opt.name, default=None, help=help_text, metavar=opt.metavar)
        elif opt.multiple:
            parser.add_argument(opt.flag, dest=opt.name, action="append", default=None, help=help_text,
                                metavar=opt.metavar)
        elif opt.type is bool:
            # --access-log/--no-access-log: None (not given) lets the environment decide.
            parser.add_argument(opt.flag, dest=opt.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            # Parsed as strings; convert() checks them so errors name the source and exit 1.
            parser.add_argument(opt.flag, dest=opt.name, default=None, help=help_text,
                                metavar=opt.metavar or ("{" + ",".join(opt.choices) + "}" if opt.choices else None))
    parser.add_argument("--print-config", action="store_true",
                        help="print every option's effective value and where it came from (cli, env, file, "
                             "default), then exit without serving")
    parser.add_argument("--version", action="version", version=f"fulmen {__version__}")
    return parser


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
    """Options from the command line, the environment and the --config file, checked. Raises
    ConfigError."""
    args = vars(build_parser().parse_args(argv))
    cfg = Settings()
    cfg.sources = {}
    cfg.print_config = bool(args.get("print_config"))

    def from_cli_or_env(opt: Option) -> bool:
        cli = args[opt.name]
        if cli is not None and opt.multiple:
            cfg[opt.name] = tuple(convert(opt, [item], f"{opt.flag} {item}")[0] for item in cli)
            cfg.sources[opt.name] = "cli"
        elif cli is not None:
            shown = ("--" if cli else "--no-") + opt.flag[2:] if opt.type is bool and not opt.takes_value else (
                cli if opt.positional else f"{opt.flag} {cli}")
            cfg[opt.name] = convert(opt, cli, shown)
            cfg.sources[opt.name] = "cli"
        elif environ.get(opt.env):  # set but empty counts as unset, as in Click
            cfg[opt.name] = convert(opt, environ[opt.env], f"{opt.env}={environ[opt.env]}")
            cfg.sources[opt.name] = "env"
        elif opt.alt_env and environ.get(opt.alt_env):
            cfg[opt.name] = convert(opt, environ[opt.alt_env], f"{opt.alt_env}={environ[opt.alt_env]}")
            cfg.sources[opt.name] = "env"
        else:
            return False
        return True

    file_values: dict[str, Any] = {}
    # The file is found first (command line, then FULMEN_CONFIG): its values rank below both.
    if from_cli_or_env(BY_NAME["config"]) and cfg["config"]:
        file_values = load_config_file(cfg["config"])
    for opt in OPTIONS:
        if opt.name in cfg.sources:
            continue
        if from_cli_or_env(opt):
            continue
        if opt.name in file_values:
            cfg[opt.name] = file_values[opt.name]
            cfg.sources[opt.name] = "file"
        else:
            cfg[opt.name] = opt.default
            cfg.sources[opt.name] = "default"
    check(cfg, from_cli=not cfg.print_config)
    return cfg


def _read_toml(path: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - depends on the Python running the tests
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError(f"--config {path}: reading TOML on Python < 3.11 needs the tomli package "
                              "(pip install tomli)") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def load_config_file(path: str) -> dict[str, Any]:
    """The options a TOML file sets, converted and checked; raises ConfigError naming the file,
    the key and what to write instead."""
    data = _read_toml(path)
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        opt = BY_NAME.get(name)
        if opt is None or name == "config":
            why = ("a config file cannot name another one" if name == "config" else
                   "not an option; keys are the option names without -- (e.g. port, timeout_keep_alive), "
                   "see fulmen --help")
            raise ConfigError(f"config file {path}: unknown key {key!r}: {why}")
        if name in values:
            raise ConfigError(f"config file {path}: {key!r} is set twice (as {name} and {name.replace('_', '-')})")
        source = f"config file {path}: {key} = {_toml_value(value)}"
        # TOML has types: a string where a number or a boolean belongs is a mistake, not a value
        # to parse (the environment, where everything is a string, is the place for that).
        expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}[opt.type]
        if opt.auto and isinstance(value, str) and value.strip().lower() == "auto":
            values[name] = convert(opt, value, source)  # workers = "auto"
            continue
        if opt.multiple and isinstance(value, str):
            value = [value]  # one item: only the environment splits on commas and spaces
        if opt.multiple and isinstance(value, list) and all(isinstance(v, str) for v in value):
            values[name] = convert(opt, value, source)  # e.g. bind = ["0.0.0.0:80", "unix:/run/app.sock"]
            continue
        if not isinstance(value, expected) or (opt.type is not bool and isinstance(value, bool)):
            example = {bool: "true or false", int: "an integer, e.g. 8000",
                       float: "a number, e.g. 5 or 2.5", str: 'a string in quotes, e.g. "value"'}[opt.type]
            if opt.auto:
                example = 'an integer or "auto"'
            if opt.multiple:
                example = 'a string or a list of strings, e.g. ["a", "b"]'
            raise ConfigError(f"invalid {source}: expected {example}")
        values[name] = convert(opt, value, source)
    return values


def render(cfg: Settings) -> str:
    """--print-config: every option as TOML (usable as a --config file), with where it came from."""
    lines = []
    sources = getattr(cfg, "sources", {})
    width = max(len(o.name) for o in OPTIONS)
    for opt in OPTIONS:
        value = cfg.get(opt.name, opt.default)
        source = sources.get(opt.name, "default")
        if opt.unparse is not None and value not in (None, ()):
            value = opt.unparse(value)
        if opt.name == "config" and value is not None:
            # Commented out: the output is itself a valid config file, which cannot name another.
            lines.append(f"# {opt.name.ljust(width - 2)} = {_toml_value(value)}".ljust(width + 30) + f"  # {source}")
        elif value is None:
            lines.append(f"# {opt.name} is not set".ljust(width + 30) + f"  # {source}")
        else:
            lines.append(f"{opt.name.ljust(width)} = {_toml_value(value)}".ljust(width + 30) + f"  # {source}")
    return "\n".join(lines) + "\n"


def from_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options given to fulmen.run(): defaults plus the given values, checked."""
    unknown = sorted(set(options) - set(BY_NAME))
    if unknown:
        raise TypeError(f"run() got unknown option(s): {', '.join(unknown)}")
    cfg = Settings((opt.name, opt.default) for opt in OPTIONS)
    cfg.sources = {opt.name: "default" for opt in OPTIONS}
    if options.get("config"):  # run(app, config="fulmen.toml"): the file, below the keywords
        for name, value in load_config_file(convert(BY_NAME["config"], options["config"], "config")).items():
            cfg[name] = value
            cfg.sources[name] = "file"
    for name, value in options.items():
        cfg[name] = convert(BY_NAME[name], value, f"{name}={value!r}")
        cfg.sources[name] = "run()"
    return check(cfg, from_cli=False)


def usable_cpus() -> int:
    """--workers auto: the CPUs this process may run on (its affinity, e.g. taskset or a
    container's cpuset), not every CPU of the host."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check(cfg: dict[str, Any], from_cli: bool = True) -> dict[str, Any]:
    """Checks that involve several options."""
    if from_cli and not cfg["app"]:
        raise ConfigError(f'no application given: pass APP as "module:attribute" or set {ENV_PREFIX}APP')
    if isinstance(cfg["forwarded_allow_ips"], str):  # the default, not converted
        cfg["forwarded_allow_ips"] = parse_allow_ips(cfg["forwarded_allow_ips"])
    if isinstance(cfg["forwarded_headers"], str):  # the default, not converted
        cfg["forwarded_headers"] = parse_forwarded_headers(cfg["forwarded_headers"])
    if cfg["reload"]:
        if cfg["workers"] is not None and cfg["workers"] != 1:
            raise ConfigError("--reload and --workers both given: --reload runs one worker; drop one of them")
        if cfg["preload"]:
            raise ConfigError("--reload and --preload both given: a reload must import the app again; "
                              "drop --preload")
        cfg["workers"] = 1
        if getattr(cfg, "sources", {}).get("timeout", "default") == "default":
            cfg["timeout"] = 0.0  # development: a worker paused in a debugger must not be killed
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
        cfg["workers"] = usable_cpus()
    return cfg


# ---- sockets, concurrency and proxies: values that need more than a type check ----

def parse_bind(text: str | tuple) -> tuple:
    """--bind ADDRESS -> ("tcp", host, port) | ("unix", path) | ("fd", n). Already parsed: as is."""
    if isinstance(text, tuple):
        return text
    fix = "use HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N"
    if text.startswith("unix:"):
        if not text[5:]:
            raise ValueError(f"no socket path; {fix}")
        return ("unix", text[5:])
    if text.startswith("fd://"):
        if not text[5:].isdigit():
            raise ValueError(f"fd:// needs a descriptor number; {fix}")
        return ("fd", int(text[5:]))
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.%\w]*\]|[^:\[\]]*):(\d{1,5})", text)
    if m is None or int(m.group(2)) > 65535:
        raise ValueError(f"{fix} (port 0-65535)")
    return ("tcp", m.group(1), int(m.group(2)))


def format_bind(b: tuple) -> str:
    """The inverse of parse_bind."""
    if b[0] == "unix":
        return f"unix:{b[1]}"
    if b[0] == "fd":
        return f"fd://{b[1]}"
    return f"{b[1]}:{b[2]}"


def parse_mode(text: str | int) -> int:
    if isinstance(text, int) and not isinstance(text, bool) and 0 <= text <= 0o777:
        return text
    digits = str(text).strip().lower().removeprefix("0o")
    if not re.fullmatch(r"[0-7]{1,4}", digits) or int(digits, 8) > 0o777:
        raise ValueError("expected octal permissions such as 660 or 0600 (at most 777)")
    return int(digits, 8)


FORWARDED_HEADERS = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "forwarded")


def parse_forwarded_headers(value: str | tuple) -> tuple[str, ...]:
    """--forwarded-headers -> a tuple of lower-case header names, in FORWARDED_HEADERS order."""
    if isinstance(value, tuple):
        return value
    items = {item.lower() for item in split_list(value)}
    for item in sorted(items):
        if item not in FORWARDED_HEADERS:
            raise ValueError(f"{item!r} is not a proxy header Fulmen reads; choose from "
                             f"{', '.join(FORWARDED_HEADERS)} (comma-separated)")
    if not items:
        raise ValueError("no header given; the default is x-forwarded-for,x-forwarded-proto")
    if "forwarded" in items and len(items) > 1:
        raise ValueError("forwarded (RFC 7239) cannot be combined with x-forwarded-*: choose forwarded "
                         "alone, or only x-forwarded-* headers")
    return tuple(h for h in FORWARDED_HEADERS if h in items)


def parse_allow_ips(value: str | tuple) -> tuple[str, ...]:
    """--forwarded-allow-ips -> ("*",) or a tuple of "unix" and networks as text ("10.0.0.0/8")."""
    if isinstance(value, tuple):
        return value
    items = split_list(value)
    if "*" in items:
        return ("*",)
    out = []
    for item in items:
        if item == "unix":
            out.append(item)
            continue
        try:
            out.append(str(ipaddress.ip_network(item.strip("[]") if "/" not in item else
                                                item.replace("[", "").replace("]", ""), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network (e.g. 10.0.0.0/8, ::1, unix for "
                             "Unix-socket peers, or * for any)") from None
    return tuple(out)
