"""docs/algorithm.md is the method's reference inside the repository: every section that code, configs, tests and
docs cite exists, its quirk table is complete and names every ``quirks.*`` switch, and the README, the docs and the
configs point at nothing outside the repository."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "algorithm.md"
CITATION = re.compile(r"§(\d+(?:\.\d+)?[a-z]?)(?:-(\d+(?:\.\d+)?))?")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?[a-z]?)\.? ", re.MULTILINE)


def _sections() -> set[str]:
    return {m.group(1).rstrip(".") for m in HEADING.finditer(DOC.read_text(encoding="utf-8"))}


def _citing_files() -> list[Path]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for folder, suffixes in (("excel", (".py",)), ("tools", (".py",)), ("scripts", (".py",)), ("tests", (".py",)),
                             ("benchmarks", (".py",)), ("configs", (".yaml",))):
        files += [p for p in sorted((REPO / folder).rglob("*")) if p.suffix in suffixes]
    return files


def test_sections_keep_the_reference_numbering():
    sections = _sections()
    assert {str(n) for n in range(1, 13)} <= sections
    for wanted in ("1.1", "1.7", "2.3", "3.3", "5.1", "5.7", "6.3", "8.5", "9.4", "9.4a", "9.5", "10.2"):
        assert wanted in sections


def test_every_cited_section_exists():
    sections = _sections()
    cited = 0
    for path in _citing_files():
        for match in CITATION.finditer(path.read_text(encoding="utf-8")):
            for number in filter(None, match.groups()):
                assert number in sections, f"{path.relative_to(REPO)} cites §{number}, which algorithm.md lacks"
                cited += 1
    assert cited > 100  # the code does cite it


def test_quirk_table_is_complete_and_names_every_switch():
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("## 11. Quirks"):text.index("## 12.")]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert [int(r[0]) for r in rows] == list(range(1, 23))
    assert all(len(r) == 4 and all(cell.strip() for cell in r) for r in rows)  # number, behaviour, switch, effect
    base = yaml.safe_load((REPO / "configs" / "base.yaml").read_text(encoding="utf-8"))
    for key in base["quirks"]:
        assert f"`quirks.{key}`" in table, f"quirks.{key} is not in the quirk table of algorithm.md §11"


def test_readme_docs_and_configs_point_inside_the_repository():
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "configs").rglob("*.yaml"))]
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert "shared/" not in text and "EXCEL_SPEC" not in text, path
        assert not re.search(r"\bspec\b", text, re.IGNORECASE), f"{path.relative_to(REPO)} cites a 'spec'"
    assert "docs/algorithm.md" in (REPO / "README.md").read_text(encoding="utf-8")
