"""Service resources: what `GET /service-resources` reports, in infernet-ml's `ServiceResources` format.

Use `read_resources(model)` (blocking: it reads `/proc` and the mounted disks; call it in a worker
thread) for the document, and `ServedModel.from_info` for the engine's model. The field names, types and
nesting are those of infernet-ml 2.0.0's `infernet_ml.utils.spec` (`GenericHardwareCapability` with
`OSInfo`, `CPUInfo`/`CPUCore` and `DiskInfo`; `MLComputeCapability` of type `tgi_client`), so Ritual's
routers and the node read it as they read the reference service's (docs/protocol.md §1.6). Sizes are
bytes. psutil is the source, with `/proc/cpuinfo` for the CPU's model and vendor names on Linux.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import BaseModel

from .attestation import AttestationInfo

SERVICE_ID = "tgi-client-inference-service"


class CPUCore(BaseModel):
    id: int
    frequency: float
    max_frequency: float | None = None
    min_frequency: float | None = None


class CPUInfo(BaseModel):
    model: str
    architecture: str
    byte_order: str
    vendor_id: str
    num_cores: int
    cores: list[CPUCore]


class OSInfo(BaseModel):
    name: str
    version: str


class DiskInfo(BaseModel):
    filesystem: str
    mount_point: str
    size: int
    used: int
    available: int


class GenericHardwareCapability(BaseModel):
    capability_id: Literal["base"] = "base"
    os_info: OSInfo
    cpu_info: CPUInfo
    disk_info: list[DiskInfo]


class BroadcastedArtifact(BaseModel):
    """A model as infernet-ml announces one: `repo_id` is `{storage}/{owner}/{name}`."""

    type: str
    manifest: dict[str, Any]
    repo_id: str


class MLComputeCapability(BaseModel):
    id: Literal["ml"] = "ml"
    type: Literal["tgi_client"] = "tgi_client"
    task: list[str] = ["text_generation"]
    models: list[BroadcastedArtifact] = []
    cached_models: list[BroadcastedArtifact] = []
    inference_engine: str | None = None
    inference_engine_version: str | None = None


class ServiceResources(BaseModel):
    version: str
    service_id: str = SERVICE_ID
    hardware_capabilities: list[GenericHardwareCapability]
    compute_capability: list[MLComputeCapability]


class AttestedServiceResources(ServiceResources):
    """`ServiceResources` of a container that signs its answers (TGI_INF_ATTESTATION_KEY)."""

    attestation: AttestationInfo


class ModelSupport(BaseModel):
    """The answer to `GET /service-resources?model_id=X`."""

    supported: bool


@dataclass(frozen=True)
class ServedModel:
    """The engine's model as its info route reports it (all None when the engine did not answer)."""

    model_id: str | None = None
    engine: str | None = None
    engine_version: str | None = None

    @classmethod
    def from_info(cls, info: dict[str, Any], default_engine: str) -> ServedModel:
        def text(key: str) -> str | None:
            value = info.get(key)
            return value if isinstance(value, str) and value else None

        version = text("version")
        return cls(text("model_id"), text("engine") or (default_engine if version else None), version)

    def artifact(self) -> BroadcastedArtifact | None:
        if self.model_id is None:
            return None
        # A hub id (owner/name) is a Hugging Face repository; anything else names a local model.
        parts = self.model_id.strip("/").split("/")
        storage = "huggingface" if len(parts) == 2 else "local"
        owner, name = (parts[0], parts[1]) if len(parts) == 2 else ("engine", self.model_id)
        manifest = {"model_id": self.model_id, "inference_engine": self.engine}
        return BroadcastedArtifact(type="ServedModel", manifest=manifest, repo_id=f"{storage}/{owner}/{name}")

    def serves(self, wanted: str) -> bool:
        """Whether `?model_id=wanted` names this model (its id, or its artifact's `repo_id`)."""
        artifact = self.artifact()
        return artifact is not None and wanted in (self.model_id, artifact.repo_id)


def read_resources(version: str, model: ServedModel) -> ServiceResources:
    """The whole document (blocking)."""
    artifact = model.artifact()
    return ServiceResources(
        version=version,
        hardware_capabilities=[
            GenericHardwareCapability(os_info=_os_info(), cpu_info=_cpu_info(), disk_info=_disks())
        ],
        compute_capability=[
            MLComputeCapability(
                models=[] if artifact is None else [artifact],
                inference_engine=model.engine,
                inference_engine_version=model.engine_version,
            )
        ],
    )


def _os_info() -> OSInfo:
    return OSInfo(name=platform.system(), version=platform.version())


def _cpu_info() -> CPUInfo:
    names = _proc_cpuinfo()
    freqs = psutil.cpu_freq(percpu=True) or []
    cores = [
        CPUCore(
            id=i,
            frequency=f.current,
            max_frequency=f.max or None,  # 0.0 means "not reported" (VMs, containers)
            min_frequency=f.min or None,
        )
        for i, f in enumerate(freqs)
    ]
    return CPUInfo(
        model=names.get("model name") or platform.processor() or platform.machine(),
        architecture=platform.machine(),
        byte_order="Little Endian" if sys.byteorder == "little" else "Big Endian",
        vendor_id=names.get("vendor_id") or names.get("CPU implementer") or "",
        num_cores=os.cpu_count() or len(cores),
        cores=cores,
    )


def _proc_cpuinfo() -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo ({} elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in found:
            found[key.strip()] = value.strip()
    return found


def _disks() -> list[DiskInfo]:
    disks: list[DiskInfo] = []
    seen: set[str] = set()
    for part in psutil.disk_partitions(all=False):
        if part.mountpoint in seen:
            continue
        seen.add(part.mountpoint)
        try:
            usage = psutil.disk_usage(part.mountpoint)
        except OSError:  # gone, or not readable by this user
            continue
        disks.append(
            DiskInfo(
                filesystem=part.device or part.fstype,
                mount_point=part.mountpoint,
                size=usage.total,
                used=usage.used,
                available=usage.free,
            )
        )
    return disks
