"""The lock files make a fresh install reproducible and leave a fresh clone clean: `npm ci` accepts
package-lock.json as committed (so `make deps` never rewrites it)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_makefile_installs_npm_packages_with_npm_ci() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "npm ci " in makefile
    assert "npm install" not in makefile  # npm install rewrites the lockfile


def test_package_lock_lists_every_platforms_optional_build() -> None:
    lock = json.loads((ROOT / "package-lock.json").read_text())
    packages = lock["packages"]
    for name, entry in packages.items():
        for dep, version in entry.get("optionalDependencies", {}).items():
            assert packages.get(f"node_modules/{dep}", {}).get("version") == version, (name, dep)


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_npm_ci_accepts_the_committed_lockfile(tmp_path: Path) -> None:
    for name in ("package.json", "package-lock.json"):
        shutil.copy(ROOT / name, tmp_path / name)
    done = subprocess.run(
        ["npm", "ci", "--dry-run", "--offline", "--no-audit", "--no-fund"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "package-lock.json").read_bytes() == (ROOT / "package-lock.json").read_bytes()
