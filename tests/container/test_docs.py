"""The repository stands on its own: no file cites a document that is not in it, and every citation of
docs/protocol.md names a section that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("src", "scripts", "tests", "docs", "contracts/src", "contracts/test")
TOP_LEVEL = ("README.md", "Makefile", "Dockerfile", "Dockerfile.localtgi", "docker-compose.yaml")
SUFFIXES = {".py", ".md", ".sol", ".js", ".sh", ".yaml", ".json", ".toml"}
# Built from parts so that this file does not match itself.
OUTSIDE = ["PROTOCOL" + ".md", "DESIGN" + ".md", "../" + "shared"]


def _files() -> list[Path]:
    found = [ROOT / name for name in TOP_LEVEL]
    for top in SCANNED:
        found += [p for p in (ROOT / top).rglob("*") if p.suffix in SUFFIXES and "__pycache__" not in p.parts]
    return found


def test_nothing_cites_documents_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in _files()
        for name in OUTSIDE
        if name in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_protocol_citations_name_existing_sections() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[ .]", text, flags=re.M))
    assert {"1", "1.4", "2.4", "3.5", "7"} <= sections
    cited: set[tuple[str, str]] = set()
    for path in _files():
        for match in re.finditer(r"docs/protocol\.md[`]?,? ((?:§[\d.]+(?:, )?)+)", path.read_text("utf-8")):
            for number in re.findall(r"§(\d+(?:\.\d+)?)", match.group(1)):
                cited.add((str(path.relative_to(ROOT)), number))
    assert len(cited) >= 12
    assert sorted(c for c in cited if c[1] not in sections) == []


def test_commands_in_the_docs_use_the_venvs_python() -> None:
    """`python` on a fresh machine lacks eth-abi and web3: every shown command runs `.venv/bin/python`."""
    bare = re.compile(r"^(?:\$ )?python3? ", flags=re.M)
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert [str(p.relative_to(ROOT)) for p in pages if bare.search(p.read_text("utf-8"))] == []
