"""--config FILE (TOML) and --print-config: every option from the file, the precedence
command line > FULMEN_* > file > default, and one-line errors naming the file, the key and the fix.

The checks that need no server read --print-config, which reports each option's value and source.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from conftest import run_fulmen
from fulmen import config

TABLE = re.compile(r"^(#\s*)?(\w+)\s*(?:=\s*(.*?)|is not set)\s+# (cli|env|file|default)$")


def printed(*args: str, env: dict[str, str | None] | None = None) -> dict[str, tuple[str | None, str]]:
    """--print-config's output as {option: (value as printed or None, source)}."""
    result = run_fulmen("--print-config", *args, env=env)
    assert result.returncode == 0, result.stderr
    out: dict[str, tuple[str | None, str]] = {}
    for line in result.stdout.splitlines():
        m = TABLE.match(line)
        assert m, line
        out[m.group(2)] = (m.group(3), m.group(4))
    return out


def test_print_config_lists_every_option_with_its_source():
    shown = printed("hello:app")
    assert list(shown) == [opt.name for opt in config.OPTIONS]
    assert shown["app"] == ('"hello:app"', "cli")
    assert shown["port"] == ("8000", "default")
    assert shown["uds"] == (None, "default")


def test_print_config_does_not_need_an_app_or_start_anything():
    result = run_fulmen("--print-config", "--port", "0")
    assert result.returncode == 0 and result.stderr == ""
    assert "Listening" not in result.stdout


def test_print_config_output_is_a_valid_config_file(tmp_path):
    """What --print-config prints can be saved and used as --config: the same values come back."""
    result = run_fulmen("--print-config", "--port", "9123", "--access-log-format", '"%(r)s" \\ %(s)s',
                        "--ws-ping-interval", "2.5", "--no-access-log", "--bind", "127.0.0.1:9124",
                        "--bind", "[::1]:9125", "--bind", "unix:/tmp/f.sock", "--uds-mode", "0640",
                        "--forwarded-allow-ips", "10.0.0.0/8, unix", "hello:app")
    assert result.returncode == 0, result.stderr
    saved = tmp_path / "saved.toml"
    saved.write_text(result.stdout)
    again = run_fulmen("--print-config", "--config", str(saved))
    assert again.returncode == 0, again.stderr
    values = lambda text: [re.sub(r"\s+#.*$", "", line) for line in text.splitlines()
                           if not line.startswith("# config")]
    assert values(again.stdout) == values(result.stdout)
    shown = printed("--config", str(saved))
    assert shown["port"] == ("9123", "file") and shown["access_log"] == ("false", "file")
    # Options parsed into structures print back as the text a file (or the command line) takes.
    assert shown["bind"] == ('["127.0.0.1:9124", "[::1]:9125", "unix:/tmp/f.sock"]', "file")
    assert shown["uds_mode"] == ('"640"', "file")
    assert shown["forwarded_allow_ips"] == ('"10.0.0.0/8,unix"', "file")


def test_every_option_can_come_from_the_file(tmp_path):
    """One key per option of the table (bar config itself), spelled with - or _, all read and
    converted (in-process: cross-option checks such as --uds with --fd are tested apart)."""
    # Options whose text is parsed into a structure: what the file says, what the settings hold.
    parsed = {
        "bind": (["127.0.0.1:9001", "[::1]:9002", "unix:/tmp/x.sock", "fd://3"],
                 (("tcp", "127.0.0.1", 9001), ("tcp", "[::1]", 9002), ("unix", "/tmp/x.sock"), ("fd", 3))),
        "uds_mode": ("660", 0o660),
        "forwarded_allow_ips": ("10.0.0.0/8,unix", ("10.0.0.0/8", "unix")),
        "forwarded_headers": ("X-Forwarded-Host, x-forwarded-for", ("x-forwarded-for", "x-forwarded-host")),
    }
    lines, expected = [], {}
    for i, opt in enumerate(config.OPTIONS):
        if opt.name == "config":
            continue
        key = opt.name.replace("_", "-") if i % 2 else opt.name
        if opt.name in parsed:
            lines.append(f"{key} = {json.dumps(parsed[opt.name][0])}")
            expected[opt.name] = parsed[opt.name][1]
            continue
        assert opt.parse is None, f"add a sample value for {opt.name} to `parsed`"
        if opt.multiple:  # a TOML list of strings
            lines.append(f"{key} = {json.dumps([f'/tmp/x-{opt.name}', f'/tmp/y-{opt.name}'])}")
            expected[opt.name] = (f"/tmp/x-{opt.name}", f"/tmp/y-{opt.name}")
            continue
        if opt.choices:
            value = opt.choices[-1]
        elif opt.type is bool:
            value = not opt.default
        elif opt.type is str:
            value = opt.default or f"/tmp/x-{opt.name}"
        else:
            value = opt.type((opt.min or 0) + 1)
        lines.append(f"{key} = {json.dumps(value)}")
        expected[opt.name] = value
    conf = tmp_path / "all.toml"
    conf.write_text("\n".join(lines) + "\n")
    assert config.load_config_file(str(conf)) == expected


def test_file_values_reach_the_settings(tmp_path):
    conf = tmp_path / "some.toml"
    conf.write_text('app = "hello:app"\ntimeout-keep-alive = 7\nfactory = true\nroot_path = "/api"\n')
    shown = printed("--config", str(conf), env={"FULMEN_APP_DIR": None})
    assert shown["timeout_keep_alive"] == ("7.0", "file")  # an integer is fine for a number
    assert shown["factory"] == ("true", "file") and shown["root_path"] == ('"/api"', "file")
    assert shown["app_dir"] == ('"."', "default")
    assert shown["config"] == (f'"{conf}"', "cli")


def test_precedence_cli_env_file_default(tmp_path):
    conf = tmp_path / "fulmen.toml"
    conf.write_text('app = "hello:app"\nport = 7001\nhost = "0.0.0.0"\nthreads = 3\n')
    shown = printed("--config", str(conf), "--port", "7003", env={"FULMEN_PORT": "7002", "FULMEN_HOST": "::1"})
    assert shown["port"] == ("7003", "cli")
    assert shown["host"] == ('"::1"', "env")
    assert shown["threads"] == ("3", "file")
    assert shown["app"] == ('"hello:app"', "file")
    assert shown["backlog"] == ("2048", "default")


def test_config_from_the_environment(tmp_path):
    conf = tmp_path / "env.toml"
    conf.write_text("port = 7100\n")
    shown = printed("hello:app", env={"FULMEN_CONFIG": str(conf)})
    assert shown["port"] == ("7100", "file")
    assert shown["config"] == (f'"{conf}"', "env")


def test_the_file_configures_a_real_server(server, tmp_path):
    conf = tmp_path / "serve.toml"
    conf.write_text('app = "logged:asgi"\naccess-log-format = "json"\nlog_level = "warning"\n'
                    'ws = "off"\n')
    srv = server(None, "--config", str(conf), "--log-level", "info")  # the CLI still wins
    status, _, body = srv.request("GET", "/from-file")
    assert status == 200 and body == b"logged\n"
    srv.stop()
    (line,) = [json.loads(x) for x in srv.stdout.splitlines() if x]
    assert line["path"] == "/from-file"


@pytest.mark.parametrize("text, expected", [
    ("prot = 80\n", "unknown key 'prot': not an option; keys are the option names without --"),
    ("config = \"other.toml\"\n", "unknown key 'config': a config file cannot name another one"),
    ('port = "80"\n', 'invalid config file {path}: port = "80": expected an integer, e.g. 8000'),
    ("port = 70000\n", "invalid config file {path}: port = 70000: must be between 0 and 65535"),
    ("port = 1.5\n", "port = 1.5: expected an integer"),
    ("port = true\n", "port = true: expected an integer"),
    ("access_log = \"yes\"\n", 'access_log = "yes": expected true or false'),
    ("timeout_keep_alive = -1\n", "timeout_keep_alive = -1: must be at least 0"),
    ("timeout_keep_alive = \"5\"\n", "expected a number, e.g. 5 or 2.5"),
    ("loop = \"trio\"\n", 'loop = "trio": choose one of auto, asyncio, uvloop'),
    ("host = 127\n", 'host = 127: expected a string in quotes, e.g. "value"'),
    ("[server]\nport = 1\n", "unknown key 'server'"),
    ("access_log_format = \"%(nope)s\"\n", "access_log_format = \"%(nope)s\": unknown atom %(nope)s"),
    ("port = 1\nport = 2\n", "is not valid TOML"),
    ("log_level = 'info'\nlog-level = 'debug'\n", "'log-level' is set twice"),
    ("port = \n", "is not valid TOML"),
])
def test_bad_config_file_is_a_one_line_error(tmp_path, text, expected):
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    result = run_fulmen("--config", str(conf), "hello:app")
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected.format(path=conf) in result.stderr, result.stderr
    assert str(conf) in result.stderr


def test_missing_config_file(tmp_path):
    result = run_fulmen("--config", str(tmp_path / "nope.toml"), "hello:app")
    assert result.returncode == 1
    assert result.stderr == f"Error: cannot read the config file {tmp_path / 'nope.toml'}: No such file or directory\n"


def test_socket_checks_apply_to_file_values(tmp_path):
    # Sockets from the file get the same checks as on the command line, before anything is served:
    # here a descriptor this process was never given.
    conf = tmp_path / "fd.toml"
    conf.write_text('bind = ["127.0.0.1:0", "fd://9"]\napp = "hello:app"\n')
    result = run_fulmen("--config", str(conf))
    assert result.returncode == 1
    assert "--bind fd://9: Bad file descriptor; is the descriptor passed to this process?" in result.stderr


def test_no_app_anywhere(tmp_path):
    conf = tmp_path / "noapp.toml"
    conf.write_text("port = 0\n")
    result = run_fulmen("--config", str(conf))
    assert result.returncode == 1 and "no application given" in result.stderr


def test_every_option_is_in_the_documentation_table():
    """docs/configuration.md's table lists each option of the table with its variable."""
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    for opt in config.OPTIONS:
        flag = "`APP`" if opt.positional else f"`{opt.flag}"
        assert any(row.startswith(f"| {flag}") and f"`{opt.env}`" in row for row in rows), opt.name


def test_workers_auto_and_lists_from_the_file(tmp_path):
    conf = tmp_path / "workers.toml"
    conf.write_text('app = "hello:app"\nworkers = "auto"\nmax_requests = 100\n')
    shown = printed("--config", str(conf))
    assert shown["workers"] == (str(os.cpu_count() or 1), "file")
    assert shown["max_requests"] == ("100", "file")
    conf.write_text('app = "hello:app"\nreload = true\nreload_exclude = ["*.tmp", "build"]\n')
    shown = printed("--config", str(conf))
    assert shown["reload_exclude"] == ('["*.tmp", "build"]', "file")
    assert shown["workers"] == ("1", "default")  # --reload runs one supervised worker
    conf.write_text('app = "hello:app"\nworkers = "many"\n')
    result = run_fulmen("--print-config", "--config", str(conf))
    assert result.returncode == 1 and "workers" in result.stderr and '"auto"' in result.stderr


def test_a_toml_string_for_a_repeatable_option_is_one_value(tmp_path):
    # Only the environment splits on commas and spaces; in a file a string is one item.
    conf = tmp_path / "one.toml"
    conf.write_text('app = "hello:app"\nbind = "unix:/tmp/my app.sock"\n')
    assert printed("--config", str(conf))["bind"] == ('["unix:/tmp/my app.sock"]', "file")


def test_reload_drops_the_default_worker_timeout():
    # A development worker stopped in a debugger must not be killed after 30 s...
    assert printed("--reload", "hello:app")["timeout"] == ("0.0", "default")
    # ...unless asked for.
    assert printed("--reload", "--timeout", "12", "hello:app")["timeout"] == ("12.0", "cli")


def test_run_reads_a_config_file_below_its_keywords(tmp_path):
    conf = tmp_path / "run.toml"
    conf.write_text('port = 9555\nthreads = 3\nroot_path = "/api"\n')
    cfg = config.from_kwargs({"config": str(conf), "threads": 2})
    assert (cfg["port"], cfg["threads"], cfg["root_path"]) == (9555, 2, "/api")
    assert cfg.sources["port"] == "file" and cfg.sources["threads"] == "run()"
    with pytest.raises(config.ConfigError, match="cannot read the config file"):
        config.from_kwargs({"config": str(tmp_path / "missing.toml")})
