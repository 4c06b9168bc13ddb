"""Every setting the command line or the environment can get wrong stops startup: exit 2, one line
naming the setting and the reason, before anything serves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from infernet_tgi import cli
from infernet_tgi.errors import ConfigError
from processkit import Container

URL = '["http://127.0.0.1:8080", 30]'


def refused(argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in-process with `env` as the whole environment; assert exit 2 and one line."""
    status = cli.main(argv, env)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("infernet-tgi: configuration error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "argv,env,expected",
    [
        ([], {"TGI_INF_LOG_LEVEL": "LOUD"}, "TGI_INF_LOG_LEVEL: expected one of DEBUG, INFO"),
        ([], {"TGI_INF_PORT": "99999"}, "TGI_INF_PORT: port must be in 0-65535, got 99999"),
        (["--port", "70000"], {}, "--port: port must be in 0-65535, got 70000"),
        (["--bind", "nonsense"], {}, "--bind: expected HOST:PORT or [IPv6]:PORT, got 'nonsense'"),
        (["--bind=[::1]3000"], {}, "--bind: expected [IPv6]:PORT"),
        (["--bind=[zz]:3000"], {}, "--bind: 'zz' is not an IPv6 address"),
        (["--bind=::1:3000"], {}, "--bind: expected HOST:PORT or [IPv6]:PORT"),
        (["--workers", "0"], {}, "--workers: at least 1 worker is needed, got 0"),
        (["--workers=many"], {}, "--workers: expected a positive integer or auto"),
        ([], {"TGI_INF_WORKERS": "0"}, "TGI_INF_WORKERS: at least 1 worker is needed"),
        (["--backlog", "0"], {}, "--backlog: must be positive"),
        ([], {"TGI_INF_BACKLOG": "lots"}, "TGI_INF_BACKLOG: expected an integer"),
        ([], {"TGI_INF_SHUTDOWN_GRACE": "-5"}, "TGI_INF_SHUTDOWN_GRACE: must be a positive number"),
        ([], {"TGI_INF_TOKEN": "abc\ndef"}, "TGI_INF_TOKEN: contains a line break or control character"),
        ([], {"TGI_INF_BEARER": "x\r\ny"}, "TGI_INF_BEARER: contains a line break"),
        ([], {"TGI_INF_API_KEY": "k\x1b[2J"}, "TGI_INF_API_KEY: contains a line break or control character"),
        (
            [],
            {"TGI_INF_WORKFLOW_POSITIONAL_ARGS": '["http://h", 3, {"X-A": "1\\n2"}]'},
            "headers `X-A` contains a line break",
        ),
        (
            [],
            {"TGI_INF_DEFAULT_MAX_NEW_TOKENS": "4096"},
            "TGI_INF_DEFAULT_MAX_NEW_TOKENS: 4096 is above TGI_INF_MAX_NEW_TOKENS (2048)",
        ),
        (
            [],
            {"TGI_INF_WORKFLOW_POSITIONAL_ARGS": '["http://tgi:99999", 30]'},
            "TGI_INF_WORKFLOW_POSITIONAL_ARGS server_url: 'http://tgi:99999' has a port outside 1-65535",
        ),
        (
            [],
            {"TGI_INF_UPSTREAM_URLS": "http://a:8080,http://b:99999"},
            "TGI_INF_UPSTREAM_URLS: 'http://b:99999' has a port outside 1-65535",
        ),
        (["--host", "no such host.invalid"], {}, "--host: 'no such host.invalid' is not a host name"),
        (["--verbose"], {}, "command line: unrecognized arguments: --verbose"),
    ],
)
def test_each_bad_setting_exits_2_naming_it(
    argv: list[str], env: dict[str, str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refused(argv, {"TGI_INF_WORKFLOW_POSITIONAL_ARGS": URL, **env}, capsys)
    assert expected in line


def test_an_unresolvable_host_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(["--bind", "nonsense.invalid:3000"], {}, capsys)
    assert "cannot use address 'nonsense.invalid'" in line


def test_a_password_in_a_bad_upstream_url_is_not_printed(capsys: pytest.CaptureFixture[str]) -> None:
    line = refused([], {"TGI_INF_WORKFLOW_POSITIONAL_ARGS": '["http://user:hunter2@tgi:99999", 3]'}, capsys)
    assert "hunter2" not in line and "user" not in line and "'http://tgi:99999'" in line


def test_a_port_in_use_exits_2_naming_the_port() -> None:
    """The real process: no traceback, exit 2, the port named."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            done = subprocess.run(
                [sys.executable, "-m", "infernet_tgi", "--bind", f"127.0.0.1:{port}", "--workers", workers],
                env={**os.environ, "TGI_INF_WORKFLOW_POSITIONAL_ARGS": URL},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 2, done.stderr
            assert done.stderr.strip().splitlines() == [
                f"infernet-tgi: configuration error: TGI_INF_PORT/--port/--bind: port {port} on 127.0.0.1 "
                "is already in use"
            ]


def test_parse_gives_the_settings_the_command_line_asks_for() -> None:
    settings = cli.parse(["--host", "::", "--port", "0", "--workers", "3", "--backlog", "64"], {})
    assert (settings.host, settings.port, settings.workers, settings.backlog) == ("::", 0, 3, 64)
    env = {"TGI_INF_HOST": "0.0.0.0", "TGI_INF_PORT": "3001", "TGI_INF_WORKERS": "2"}
    settings = cli.parse([], env)
    assert (settings.host, settings.port, settings.workers, settings.backlog) == ("0.0.0.0", 3001, 2, 4096)
    assert settings.shutdown_grace == settings.job_deadline == 170.0  # the grace follows the deadline
    grace = cli.parse([], {"TGI_INF_JOB_DEADLINE": "60"}).shutdown_grace
    assert grace == 60.0


def test_workers_auto_follows_the_usable_cpus() -> None:
    assert cli.parse(["--workers", "auto"], {}).workers == len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match="TGI_INF_WORKERS"):
        cli.parse([], {"TGI_INF_WORKERS": "-1"})


def test_a_second_container_on_our_port_exits_2() -> None:
    """Our workers' sockets allow sharing the port (SO_REUSEPORT) among themselves; another process
    asking for the same port must still be refused, not silently handed half the connections."""
    with Container(["--workers", "2"], {"TGI_INF_WORKFLOW_POSITIONAL_ARGS": URL}) as first:
        port = first.url.rsplit(":", 1)[1]
        done = subprocess.run(
            [sys.executable, "-m", "infernet_tgi", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
            env={**os.environ, "TGI_INF_WORKFLOW_POSITIONAL_ARGS": URL},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
        assert first.get("/").status_code == 200
