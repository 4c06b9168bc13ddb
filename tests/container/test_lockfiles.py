"""The lock files make a fresh install reproducible and leave a fresh clone clean: `npm ci` accepts
package-lock.json as committed (so `make deps` never rewrites it), and requirements.lock pins every
Python package, matches pyproject.toml, and a stale one stops `make deps` with the remedy."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
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


def _run_lock(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lock.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        requirement = line.split(";", 1)[0].strip()
        if "==" in requirement and not requirement.startswith("#"):
            name, version = requirement.split("==", 1)
            pins[re.sub(r"\[.*\]", "", name).strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_python_lock_is_current_and_installed_by_the_makefile() -> None:
    done = _run_lock("--check")
    assert done.returncode == 0, done.stderr
    makefile = (ROOT / "Makefile").read_text()
    assert "python3 scripts/lock.py --check" in makefile  # before anything is installed
    assert "-r requirements.lock" in makefile and "--no-deps -e" in makefile
    assert re.search(r"^lock:", makefile, flags=re.M)


def test_python_lock_pins_every_declared_dependency_at_its_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _pins(project["dependencies"] + project["optional-dependencies"]["localtgi"]
                     + project["optional-dependencies"]["dev"])
    locked = _pins((ROOT / "requirements.lock").read_text().splitlines())
    assert {name: locked.get(name) for name in declared} == declared
    assert "infernet-tgi" not in locked


def test_a_stale_python_lock_is_refused_loudly(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    text = (ROOT / "pyproject.toml").read_text()
    pyproject.write_text(text.replace('    "psutil==', '    "six==1.17.0",\n    "psutil==', 1))
    done = _run_lock("--check", "--pyproject", str(pyproject))
    assert done.returncode == 1
    assert "requirements.lock is stale" in done.stderr and "make lock" in done.stderr
    missing = _run_lock("--check", "--lock", str(tmp_path / "none.lock"))
    assert missing.returncode == 1 and "is missing" in missing.stderr
