"""`GET /service-resources` in infernet-ml 2.0.0's `ServiceResources` format, field for field, with this
machine's real CPU and disks and the engine's real model, whatever the upstream kind."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from typing import Any

import pytest

from containerkit import env_for
from enginekit import engine_env, localtgi_url

CPUINFO = Path("/proc/cpuinfo")
CPUINFO_TEXT = CPUINFO.read_text() if CPUINFO.exists() else ""
# The fields infernet-ml 2.0.0's `infernet_ml.utils.spec` models declare (required ones first).
SPEC: dict[str, tuple[set[str], set[str]]] = {
    "ServiceResources": ({"version", "service_id", "hardware_capabilities", "compute_capability"}, set()),
    "GenericHardwareCapability": ({"capability_id", "os_info", "cpu_info", "disk_info"}, set()),
    "OSInfo": ({"name", "version"}, set()),
    "CPUInfo": ({"model", "architecture", "byte_order", "vendor_id", "num_cores", "cores"}, set()),
    "CPUCore": ({"id", "frequency"}, {"max_frequency", "min_frequency"}),
    "DiskInfo": ({"filesystem", "mount_point", "size", "used", "available"}, set()),
    "MLComputeCapability": (
        {"id", "type", "task"},
        {"models", "cached_models", "inference_engine", "inference_engine_version"},
    ),
    "BroadcastedArtifact": ({"type", "manifest", "repo_id"}, set()),
}


def conforms(kind: str, value: dict[str, Any]) -> None:
    required, optional = SPEC[kind]
    assert required <= set(value) <= required | optional, (kind, sorted(value))


async def test_document_matches_infernet_ml_and_this_machine(app_for: Any, fake: Any) -> None:
    client = await app_for(env_for(fake.url))
    body = await (await client.get("/service-resources")).get_json()
    conforms("ServiceResources", body)
    assert body["service_id"] == "tgi-client-inference-service"
    (hardware,) = body["hardware_capabilities"]
    conforms("GenericHardwareCapability", hardware)
    assert hardware["capability_id"] == "base"
    conforms("OSInfo", hardware["os_info"])
    cpu = hardware["cpu_info"]
    conforms("CPUInfo", cpu)
    assert cpu["architecture"] == platform.machine() and cpu["num_cores"] == os.cpu_count()
    assert cpu["byte_order"] in ("Little Endian", "Big Endian")
    if CPUINFO_TEXT:
        text = CPUINFO_TEXT
        if "model name" in text:
            assert cpu["model"] and cpu["model"] in text
        if "vendor_id" in text:
            assert cpu["vendor_id"] and cpu["vendor_id"] in text
    for core in cpu["cores"]:
        conforms("CPUCore", core)
        assert isinstance(core["id"], int) and core["frequency"] >= 0
    root = [d for d in hardware["disk_info"] if d["mount_point"] == "/"]
    assert root, hardware["disk_info"]
    for disk in hardware["disk_info"]:
        conforms("DiskInfo", disk)
        assert all(isinstance(disk[k], int) for k in ("size", "used", "available"))
    assert abs(root[0]["size"] - shutil.disk_usage("/").total) < 1 << 20
    (compute,) = body["compute_capability"]
    conforms("MLComputeCapability", compute)
    assert (compute["id"], compute["type"], compute["task"]) == ("ml", "tgi_client", ["text_generation"])
    for model in compute["models"]:
        conforms("BroadcastedArtifact", model)


@pytest.mark.parametrize("kind", ["tgi", "openai"])
async def test_the_engines_real_model_whatever_the_kind(app_for: Any, kind: str) -> None:
    url = localtgi_url()
    env = engine_env(url) if kind == "tgi" else engine_env(url + "/v1", TGI_INF_UPSTREAM_KIND="openai")
    client = await app_for(env)
    body = await (await client.get("/service-resources")).get_json()
    (model,) = body["compute_capability"][0]["models"]
    assert model["manifest"]["model_id"] == "tiny"  # not "tgi", TGI's alias in OpenAI requests
    assert model["repo_id"] == "local/engine/tiny"
    for wanted, supported in (("tiny", True), ("local/engine/tiny", True), ("tgi", False)):
        answer = await (await client.get(f"/service-resources?model_id={wanted}")).get_json()
        assert answer == {"supported": supported}, wanted
