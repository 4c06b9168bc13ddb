"""Building the consumers against an SDK checkout (`INFERNET_SDK_DIR`), as the docs show for the real
infernet-sdk v1.1: its Base.sol imports a Coordinator that only compiles with the IR pipeline. A
fixture "SDK" (our stand-ins plus such a contract, imported the same way) must build: bytecode is asked
for our own sources only, and viaIR is on by default against an SDK."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "compile_contracts.js"

# Too many live locals for the legacy code generator ("Stack too deep"); fine through the IR pipeline.
HEAVY = """// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.19;
contract HeavyCoordinator {
    function mix(uint256 a, uint256 b, uint256 c, uint256 d, uint256 e, uint256 f, uint256 g, uint256 h)
        external pure returns (uint256)
    {
        uint256 i = a + b; uint256 j = c + d; uint256 k = e + f; uint256 l = g + h;
        uint256 m = i * j; uint256 n = k * l; uint256 o = m + n; uint256 p = i ^ l;
        uint256 q = j ^ k; uint256 r = o + p + q;
        return a + b + c + d + e + f + g + h + i + j + k + l + m + n + o + p + q + r;
    }
}
"""
# A consumer that deploys the heavy contract: its bytecode is needed, so only viaIR builds it.
DEPLOYS_HEAVY = """// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.19;
import {HeavyCoordinator} from "infernet-sdk/HeavyCoordinator.sol";
contract MakesHeavy {
    function make() external returns (address) { return address(new HeavyCoordinator()); }
}
"""

pytestmark = pytest.mark.skipif(
    not (ROOT / "node_modules" / "solc").exists(), reason="npm packages are not installed"
)


@pytest.fixture
def sdk(tmp_path: Path) -> Path:
    """Our stand-ins laid out like the SDK's src/, with Base.sol importing a heavy coordinator."""
    root = tmp_path / "sdk" / "src"
    shutil.copytree(ROOT / "contracts" / "src" / "sdk", root)
    base = root / "consumer" / "Base.sol"
    text = base.read_text().replace('"../../interfaces/', '"contracts/src/interfaces/')
    heavy = 'import {HeavyCoordinator} from "../HeavyCoordinator.sol";\n'
    base.write_text(text.replace("import {IRegistry}", heavy + "import {IRegistry}", 1))
    (root / "HeavyCoordinator.sol").write_text(HEAVY)
    return root


def compile_with(env: dict[str, str], out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(SCRIPT), "--force"],
        cwd=ROOT,
        env={**os.environ, "CONTRACTS_OUT": str(out), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sdk_build_asks_bytecode_for_our_sources_only(sdk: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = compile_with({"INFERNET_SDK_DIR": str(sdk), "SOLC_VIA_IR": "0"}, out)
    assert done.returncode == 0, done.stderr
    built = {p.stem for p in out.glob("*.json")}
    assert {"LLMPrompter", "RecurringPrompter", "TestCoordinator"} <= built
    assert "HeavyCoordinator" not in built and "BaseConsumer" not in built  # SDK contracts: no artifacts
    prompter = json.loads((out / "LLMPrompter.json").read_text())
    assert prompter["viaIR"] is False and len(prompter["bytecode"]) > 1000


def test_sdk_build_uses_the_ir_pipeline_by_default(sdk: Path, tmp_path: Path) -> None:
    # A scratch tree whose only source deploys the heavy contract: its bytecode is needed, so only the
    # IR pipeline can build it (and the probe stays out of our own contracts).
    tree = tmp_path / "tree"
    (tree / "contracts" / "test").mkdir(parents=True)
    (tree / "contracts" / "test" / "MakesHeavy.sol").write_text(DEPLOYS_HEAVY)
    shutil.copytree(ROOT / "scripts", tree / "scripts")
    (tree / "node_modules").symlink_to(ROOT / "node_modules")

    def build(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["node", str(tree / "scripts" / "compile_contracts.js"), "--force"],
            cwd=tree,
            env={**os.environ, "CONTRACTS_OUT": str(tmp_path / "out"), "INFERNET_SDK_DIR": str(sdk), **env},
            capture_output=True,
            text=True,
            timeout=300,
        )

    legacy = build(SOLC_VIA_IR="0")
    assert legacy.returncode != 0 and "Stack too deep" in legacy.stderr
    default = build()
    assert default.returncode == 0, default.stderr
    artifact = json.loads((tmp_path / "out" / "MakesHeavy.json").read_text())
    assert artifact["viaIR"] is True and "viaIR" in default.stdout


def test_bad_via_ir_value_is_refused(tmp_path: Path) -> None:
    done = compile_with({"SOLC_VIA_IR": "yes"}, tmp_path / "out")
    assert done.returncode == 2 and "SOLC_VIA_IR must be 1 or 0" in done.stderr
