"""The container stays light (no torch, no localtgi import), and the image and a node's `command`
start it the way we test it: the Dockerfile's command line and the seed's `--bind` are parsed by the
real CLI and the resulting bind is checked, and an IPv6 bind really serves."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx

from infernet_tgi import cli
from infernet_tgi.config import usable_cpus
from processkit import Container

ROOT = Path(__file__).resolve().parents[2]


def test_container_imports_neither_torch_nor_localtgi_nor_aiohttp() -> None:
    code = (
        "import sys, infernet_tgi.app, infernet_tgi.cli, infernet_tgi.server, infernet_tgi.worker; "
        "import infernet_tgi.upstream.factory; "
        "bad = sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('torch', 'transformers', 'localtgi', 'aiohttp')); "
        "print(','.join(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_base_dependencies_have_no_ml_stack() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split("=")[0].split(";")[0].strip().lower() for dep in project["dependencies"]}
    assert not names & {"torch", "transformers", "gguf", "llguidance"}
    assert {"uvicorn", "httptools"} <= names
    assert "aiohttp" not in names  # the upstream client is our own (httptools); aiohttp is a dev tool
    assert project["scripts"]["infernet-tgi"] == "infernet_tgi.cli:main"


def _dockerfile() -> tuple[list[str], dict[str, str], str]:
    """The image's ENTRYPOINT + CMD and its ENV, as docker would hand them to the process."""
    text = (ROOT / "Dockerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    command = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    block = re.search(r"^ENV (.*?)\n\n", text, re.M | re.S).group(1)  # type: ignore[union-attr]
    env = dict(pair.split("=", 1) for pair in re.findall(r"(\w+=\S+)", block.replace("\\\n", " ")))
    return entry + command, env, text


def test_the_image_serves_on_0_0_0_0_3000_with_one_worker_per_cpu() -> None:
    argv, env, text = _dockerfile()
    assert argv[0] == "infernet-tgi" and "EXPOSE 3000" in text and "[localtgi" not in text
    settings = cli.parse(argv[1:], env)
    assert (settings.host, settings.port) == ("0.0.0.0", 3000)
    assert settings.workers == usable_cpus() >= 1
    assert settings.backlog >= 4096


def test_the_seed_command_replaces_cmd_and_is_honoured() -> None:
    """A node's `command: --bind=0.0.0.0:3000 --workers=2` (hypercorn's spelling) under the image's ENV."""
    _, env, _ = _dockerfile()
    settings = cli.parse(["--bind=0.0.0.0:3000", "--workers=2"], env)
    assert (settings.host, settings.port, settings.workers) == ("0.0.0.0", 3000, 2)
    assert cli.parse(["--bind", "127.0.0.1:8000"], env).port == 8000
    assert cli.parse(["--bind=localhost:3000"], {}).host == "localhost"


def test_ipv6_binds_parse_without_extra_brackets() -> None:
    assert cli.parse_bind("[::1]:3000") == ("::1", 3000)
    assert cli.parse_bind("[::]:80") == ("::", 80)
    settings = cli.parse(["--bind=[::1]:3000"], {})
    assert (settings.host, settings.port) == ("::1", 3000)


def test_an_ipv6_bind_really_serves() -> None:
    with Container(["--bind=[::1]:0"]) as container:
        assert container.url.startswith("http://[::1]:")
        answer = httpx.get(container.url + "/", timeout=5)
        assert answer.status_code == 200 and answer.json()["message"]
