"""Static checks of the Docker and compose files (no Docker engine here): the container is reachable
only on the compose network unless a bearer guards it, health checks follow the configured port,
localtgi's image runs unprivileged without copying its model cache twice, the CPU set-up never starts
the GPU server, and the node's log file lands in its volume."""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
CONFIG: dict[str, Any] = json.loads((ROOT / "config.sample.json").read_text())


def _instructions(name: str) -> list[tuple[str, str]]:
    """A Dockerfile's (INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / name).read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_container_is_not_published_and_takes_a_bearer() -> None:
    container = SERVICES["infernet-tgi"]
    for mapping in container.get("ports", []):
        assert str(mapping).startswith("127.0.0.1:"), mapping  # never every interface
    assert "3000" in container["expose"]
    assert "TGI_INF_BEARER" in container["environment"]
    (entry,) = [c for c in CONFIG["containers"] if c["id"] == "tgi_client_inference_service"]
    assert entry["url"] == "http://infernet-tgi:3000"  # the node reaches it by service name
    assert "bearer" in entry


def test_cpu_profile_never_starts_the_gpu_server() -> None:
    def started(profile: str) -> set[str]:
        return {name for name, s in SERVICES.items() if not s.get("profiles") or profile in s["profiles"]}

    def wants_gpu(service: dict[str, Any]) -> bool:
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        return any("gpu" in d.get("capabilities", []) for d in devices)

    assert "localtgi" in started("cpu") and not any(wants_gpu(SERVICES[n]) for n in started("cpu"))
    assert "tgi" in started("gpu") and "localtgi" not in started("gpu")
    for name in started("cpu"):
        assert "tgi" not in SERVICES[name].get("depends_on", []), name


def test_localtgi_image_runs_unprivileged_on_the_port_compose_uses() -> None:
    steps = _instructions("Dockerfile.localtgi")
    words = [w for w, _ in steps]
    user_at = words.index("USER")
    convert_at = next(i for i, (w, a) in enumerate(steps) if w == "RUN" and "load_model" in a)
    assert user_at < convert_at  # the cache is written by its owner: no chown -R layer
    assert not any(w == "RUN" and "chown -R" in a for w, a in steps)
    (expose,) = [a for w, a in steps if w == "EXPOSE"]
    port = int(expose)
    assert port >= 1024  # an unprivileged user cannot bind below 1024
    (entrypoint,) = [json.loads(a) for w, a in steps if w == "ENTRYPOINT"]
    assert entrypoint[entrypoint.index("--port") + 1] == str(port)
    (health,) = [a for w, a in steps if w == "HEALTHCHECK"]
    assert f"127.0.0.1:{port}/health" in health
    assert SERVICES["localtgi"]["expose"] == [str(port)]
    assert f"localtgi:{port}" in (ROOT / "docker-compose.yaml").read_text()


def test_container_health_check_follows_the_configured_port() -> None:
    steps = _instructions("Dockerfile")
    (health,) = [a for w, a in steps if w == "HEALTHCHECK"]
    assert "TGI_INF_PORT" in health and "127.0.0.1:3000" not in health
    env = " ".join(a for w, a in steps if w == "ENV")
    assert "TGI_INF_PORT=3000" in env


def test_node_log_file_is_in_the_node_logs_volume() -> None:
    mounts = dict(v.split(":")[:2][::-1] for v in SERVICES["node"]["volumes"])  # mount point -> source
    log_dir = str(PurePosixPath(CONFIG["log"]["path"]).parent)
    assert mounts.get(log_dir) == "node-logs", (log_dir, mounts)
    assert "node-logs" in COMPOSE["volumes"]


def test_localtgi_image_installs_its_own_extra_only() -> None:
    # Every third-party module localtgi imports comes from the `localtgi` extra, and the image installs
    # that extra with the project itself --no-deps, so the container's dependencies stay out of it.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["optional-dependencies"]["localtgi"]
    extra = {re.split(r"[=<>;\[ ]", r)[0].lower().replace("_", "-") for r in requirements}
    import_names = {"prometheus_client": "prometheus-client"}
    imported: set[str] = set()
    for source in (ROOT / "src" / "localtgi").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in (n.partition(".")[0] for n in names):
                if name not in sys.stdlib_module_names and name != "localtgi":
                    imported.add(import_names.get(name, name).replace("_", "-"))
    assert "quart" in imported and "openvino" in imported  # the scan sees real imports
    assert imported <= extra | {"werkzeug"}, imported - extra  # werkzeug comes with quart
    installs = " ".join(a for w, a in _instructions("Dockerfile.localtgi") if w == "RUN")
    assert "['optional-dependencies']['localtgi']" in installs and "pip install --no-deps ." in installs
    assert '".[localtgi]"' not in installs
