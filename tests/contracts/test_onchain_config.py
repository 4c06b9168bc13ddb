"""config.sample.json against the node 1.4.0 config schema (docs/protocol.md §1.8), and the compose file.

The schema is written here from §1.10's tables: every key the node reads, its type, and nothing else
(an unknown key such as the pre-1.0 `log_path` is silently ignored by the node, so it is an error here).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from infernet_tgi.config import Settings

ROOT = Path(__file__).resolve().parents[2]
ADDRESS = {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"}
STR_LIST = {"type": "array", "items": {"type": "string"}}

CONTAINER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "minLength": 1, "pattern": "^[^,]+$"},
        "image": {"type": "string"},
        "url": {"type": "string"},
        "bearer": {"type": "string"},
        "port": {"type": ["integer", "string"], "pattern": "^[0-9]+$", "minimum": 1, "maximum": 65535},
        "external": {"type": "boolean"},
        "gpu": {"type": "boolean"},
        "accepted_payments": {
            "type": "object",
            "propertyNames": {"pattern": "^0x[0-9a-fA-F]{40}$"},
            "additionalProperties": {"type": "integer", "minimum": 0},
        },
        "allowed_ips": STR_LIST,
        "allowed_addresses": {"type": "array", "items": ADDRESS},
        "allowed_delegate_addresses": {"type": "array", "items": ADDRESS},
        "description": {"type": "string"},
        "command": {"type": "string"},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "generates_proofs": {"type": "boolean"},
        "volumes": STR_LIST,
    },
}

NODE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["containers"],
    "additionalProperties": False,
    "properties": {
        "containers": {"type": "array", "items": CONTAINER_SCHEMA},
        "chain": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "enabled": {"type": "boolean"},
                "rpc_url": {"type": "string"},
                "trail_head_blocks": {"type": "integer", "minimum": 0},
                "registry_address": ADDRESS,
                "wallet": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "max_gas_limit": {"type": "integer", "minimum": 1},
                        "private_key": {"type": "string", "pattern": "^(0x)?[0-9a-fA-F]{64}$"},
                        "payment_address": ADDRESS,
                        "allowed_sim_errors": STR_LIST,
                    },
                },
            },
            # rpc_url, registry_address and the wallet key are required only when enabled.
            "if": {"properties": {"enabled": {"const": True}}, "required": ["enabled"]},
            "then": {
                "required": ["rpc_url", "registry_address", "wallet"],
                "properties": {"wallet": {"required": ["private_key"]}},
            },
        },
        "docker": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["username", "password"],
                    "additionalProperties": False,
                    "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
                },
            ]
        },
        "forward_stats": {"type": "boolean"},
        "log": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "path": {"type": "string"},
                "max_file_size": {"type": "integer", "minimum": 1},
                "backup_count": {"type": "integer", "minimum": 0},
            },
        },
        "manage_containers": {"type": "boolean"},
        "redis": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"host": {"type": "string"}, "port": {"type": "integer"}},
        },
        "server": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "port": {"type": "integer"},
                "rate_limit": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "num_requests": {"type": "integer", "minimum": 1},
                        "period": {"type": "integer", "minimum": 1},
                    },
                },
            },
        },
        "startup_wait": {"type": "number", "minimum": 0},
    },
}


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT / "config.sample.json").read_text())
    return loaded


def test_sample_config_matches_node_schema(config: dict[str, Any]) -> None:
    jsonschema.validate(config, NODE_SCHEMA)


def test_schema_rejects_what_the_node_would_mishandle(config: dict[str, Any]) -> None:
    """The schema is not vacuous: each of these mistakes fails validation."""
    broken: list[dict[str, Any]] = []
    c = copy.deepcopy(config)
    c["log_path"] = "infernet_node.log"  # pre-1.0 key, ignored by node 1.4.0
    broken.append(c)
    c = copy.deepcopy(config)
    c["containers"][0]["id"] = "a,b"  # ids are comma-joined on-chain
    broken.append(c)
    c = copy.deepcopy(config)
    c["containers"][0]["env"]["TGI_INF_WORKFLOW_POSITIONAL_ARGS"] = ["http://tgi:80", 30]
    broken.append(c)
    c = copy.deepcopy(config)
    c["chain"]["enabled"] = True
    del c["chain"]["registry_address"]
    broken.append(c)
    c = copy.deepcopy(config)
    c["containers"][0]["allowed_addresses"] = ["0x12"]
    broken.append(c)
    for bad in broken:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, NODE_SCHEMA)


def test_our_container_entry(config: dict[str, Any]) -> None:
    (entry,) = [c for c in config["containers"] if c["id"] == "tgi_client_inference_service"]
    assert int(entry["port"]) == 3000
    assert entry["external"] is True
    assert entry["generates_proofs"] is True  # requires_proof jobs are signed when a key is given
    for key in ("allowed_ips", "allowed_addresses", "allowed_delegate_addresses"):
        assert entry[key] == []
    env = entry["env"]
    assert set(env) == {
        "TGI_INF_TOKEN", "TGI_INF_WORKFLOW_POSITIONAL_ARGS", "TGI_INF_WORKFLOW_KW_ARGS",
        "TGI_INF_ATTESTATION_KEY", "TGI_INF_ATTESTATION_CHAIN_ID",
    }
    # Empty = no key: the sample starts (and refuses proof jobs with a 400) until the operator adds one.
    assert Settings.from_env(env).attester is None
    positional = json.loads(env["TGI_INF_WORKFLOW_POSITIONAL_ARGS"])
    assert isinstance(positional[0], str) and positional[0].startswith("http")
    assert isinstance(positional[1], int | float)
    kw = json.loads(env["TGI_INF_WORKFLOW_KW_ARGS"])
    assert set(kw["retry_params"]) <= {"tries", "delay", "max_delay", "backoff", "jitter"}
    assert kw["max_new_tokens"] > 0
    assert kw.get("temperature", 1) > 0  # TGI rejects temperature 0 on /generate
    # Compose runs the container itself; the node must call it by its service name.
    assert config["manage_containers"] is False
    assert entry["url"] == "http://infernet-tgi:3000"


def test_compose_runs_node_redis_container_and_gpu_tgi(config: dict[str, Any]) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert services["node"]["image"] == "ritualnetwork/infernet-node:1.4.0"
    assert "./config.json:/app/config.json:ro" in services["node"]["volumes"]
    assert services["redis"]["image"].startswith("redis:")
    assert config["redis"]["host"] == "redis"
    container = services["infernet-tgi"]
    assert container["expose"] == ["3000"] and "ports" not in container  # reached by name, not published
    assert json.loads(container["environment"]["TGI_INF_WORKFLOW_KW_ARGS"]) == json.loads(
        config["containers"][0]["env"]["TGI_INF_WORKFLOW_KW_ARGS"]
    )
    tgi = services["tgi"]
    assert tgi["image"].startswith("ghcr.io/huggingface/text-generation-inference:")
    assert "tgi-models:/data" in tgi["volumes"] and "tgi-models" in compose["volumes"]
    (device,) = tgi["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    anvil = services["infernet-anvil"]
    assert anvil["profiles"] == ["anvil"]
    assert config["chain"]["rpc_url"] == "http://infernet-anvil:3000"
    assert services["localtgi"]["build"]["dockerfile"] == "Dockerfile.localtgi"
    assert (ROOT / "Dockerfile.localtgi").exists()
