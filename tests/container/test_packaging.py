"""The container stays light: no torch, no localtgi import, and the Dockerfile runs what we test."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_container_imports_neither_torch_nor_localtgi() -> None:
    code = (
        "import sys, infernet_tgi.app, infernet_tgi.cli; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'localtgi')); "
        "print(','.join(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_base_dependencies_have_no_ml_stack() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split("=")[0].split(";")[0].strip().lower() for dep in project["dependencies"]}
    assert not names & {"torch", "transformers", "gguf", "llguidance"}
    assert project["scripts"]["infernet-tgi"] == "infernet_tgi.cli:main"


def test_dockerfile_serves_the_console_script_on_3000() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["infernet-tgi"]' in text
    assert '"--host", "0.0.0.0", "--port", "3000"' in text
    assert "[localtgi" not in text and "EXPOSE 3000" in text  # the slim image has no ML stack


def test_seed_command_line_is_accepted() -> None:
    """The seed's config passes `--bind=0.0.0.0:3000 --workers=2`; the CLI must understand it."""
    done = subprocess.run(
        [sys.executable, "-m", "infernet_tgi", "--bind=0.0.0.0:3000", "--workers=2", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--workers" in done.stdout
