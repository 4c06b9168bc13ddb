"""`infernet-tgi`: the container's command line.

Use it as the image's entry point (`infernet-tgi --host 0.0.0.0 --port 3000`), with a node's `command`
(`--bind=0.0.0.0:3000 --workers=2`, hypercorn's spelling, still honoured), or locally. `parse` turns the
arguments and the environment into the one frozen `Settings`; any bad value, flag or environment
variable, exits with status 2 and one line naming it, before anything starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import sys
from collections.abc import Mapping
from typing import NoReturn

from . import __version__
from .config import Settings, port_number, worker_count
from .errors import ConfigError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a `ConfigError` (one line, exit 2 from `main`)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"command line: {message}")


def parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the tests to check the node's command form)."""
    cli = _Parser(
        prog="infernet-tgi",
        description="Infernet LLM inference container (TGI / OpenAI-compatible upstreams).",
        epilog="Upstream and limits are set by TGI_INF_* environment variables (see README).",
    )
    cli.add_argument("--host", help="bind address (default TGI_INF_HOST or 127.0.0.1)")
    cli.add_argument("--port", help="bind port, 0 for any free one (default TGI_INF_PORT or 3000)")
    cli.add_argument(
        "--bind", help="HOST:PORT or [IPv6]:PORT, as hypercorn spells it (overrides --host/--port)"
    )
    cli.add_argument(
        "--workers",
        help="worker processes, each with its own upstream pool; a number or `auto` for one per usable "
        "CPU (default TGI_INF_WORKERS or 1)",
    )
    cli.add_argument("--backlog", help="listen queue of each worker (default TGI_INF_BACKLOG or 4096)")
    cli.add_argument("--version", action="version", version=f"infernet-tgi {__version__}")
    return cli


def parse(argv: list[str], env: Mapping[str, str]) -> Settings:
    """The settings for these arguments and this environment; `ConfigError` naming what is wrong."""
    args = parser().parse_args(argv)
    settings = Settings.from_env(env)
    changes: dict[str, object] = {}
    if args.bind is not None:
        changes["host"], changes["port"] = parse_bind(args.bind)
    else:
        if args.host is not None:
            changes["host"] = _host(args.host, "--host")
        if args.port is not None:
            changes["port"] = port_number(args.port, "--port")
    if args.workers is not None:
        changes["workers"] = worker_count(args.workers, "--workers")
    if args.backlog is not None:
        changes["backlog"] = _backlog(args.backlog)
    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]


def parse_bind(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` (hypercorn's `--bind`) as (host, port); IPv6 hosts unbracketed."""
    raw = text.strip()
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"--bind: expected [IPv6]:PORT, got {text!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ConfigError(f"--bind: {host!r} is not an IPv6 address") from exc
        return host, port_number(rest[1:], "--bind")
    host, sep, port = raw.rpartition(":")
    if not sep or not host or ":" in host:
        raise ConfigError(f"--bind: expected HOST:PORT or [IPv6]:PORT, got {text!r}")
    return _host(host, "--bind"), port_number(port, "--bind")


def _host(text: str, name: str) -> str:
    host = text.strip().strip("[]") if text.strip().startswith("[") else text.strip()
    if not host or any(c.isspace() or c in "/@?#" for c in host):
        raise ConfigError(f"{name}: {text!r} is not a host name or address")
    return host


def _backlog(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise ConfigError(f"--backlog: expected a positive integer, got {text!r}") from exc
    if value < 1:
        raise ConfigError(f"--backlog: must be positive, got {value}")
    return value


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the container with these arguments and this environment (the process's by default); the
    exit status (2 for any configuration error)."""
    try:
        settings = parse(sys.argv[1:] if argv is None else argv, os.environ if env is None else env)
        from .logs import configure
        from .server import serve

        configure(settings.log_level)
        return serve(settings)
    except ConfigError as exc:
        print(f"infernet-tgi: configuration error: {exc}", file=sys.stderr)
        return 2
