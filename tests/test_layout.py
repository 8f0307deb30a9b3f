"""The code's layout as the README tells it: its module map names every module there is and no
module that is gone, and no module grows past 400 lines (a module that does should split by idea)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tasks", "flows")  # installed as kbitlaw and kbitlaw.flows
MAX_LINES = 400


def module_map() -> dict[str, set[str]]:
    """The README's module map: folder -> the module files it names. The map is the code block after
    the line '<!-- module map -->'; a line starting with a folder (`tasks/law/joint/`) opens its
    section, indented lines continue it."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- module map -->", 1)[1].split("```", 2)[1]
    sections: dict[str, set[str]] = {}
    folder = None
    for line in block.splitlines():
        if opened := re.match(r"^(\S+/)", line):
            folder = opened.group(1).rstrip("/")
            sections.setdefault(folder, set())
        if folder is not None:
            sections[folder] |= set(re.findall(r"\b(\w+\.py)\b", line))
    return sections


def source_folders() -> dict[str, set[str]]:
    return {
        str(d.relative_to(ROOT)): {p.name for p in d.glob("*.py") if p.name != "__init__.py"}
        for package in PACKAGES
        for d in [ROOT / package, *sorted((ROOT / package).rglob("*/"))]
        if d.is_dir() and "__pycache__" not in d.parts and any(d.glob("*.py"))
    }


def test_the_module_map_names_every_module_and_nothing_else():
    named, actual = module_map(), source_folders()
    assert sorted(named) == sorted(actual), "folders in the map differ from the source folders"
    for folder, files in actual.items():
        missing, gone = files - named[folder], named[folder] - files - {"__init__.py"}
        assert not missing and not gone, f"{folder}/: missing from the map {missing}, gone {gone}"


def test_no_module_is_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for package in PACKAGES
        for p in (ROOT / package).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these by idea: {long}"
