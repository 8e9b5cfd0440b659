"""docs/design.md is the design reference: every citation of it names a section that exists,
every file it points to exists, and nothing cites the external SPEC any more."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "design.md"
# `docs/design.md, "Section"` or `docs/design.md, "A" and "B"`, possibly across a line break
CITATION = re.compile(r'docs/design\.md,\s*("[^"\n]+"(?:\s*(?:,|and)\s*"[^"\n]+")*)')
SPEC = re.compile(r"\bSPEC\b")


def sections() -> set[str]:
    headings = re.findall(r"^#{2,3} (.+)$", DOC.read_text(), flags=re.M)
    return {re.sub(r"^\d+\. ", "", h).strip() for h in headings}


def project_files() -> list[Path]:
    files = [ROOT / "README.md", *ROOT.glob("configs/*.yaml")]
    for folder in ("src", "tests", "scripts", "benchmarks"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".sh")]
    return [p for p in files if p.resolve() != Path(__file__).resolve()]


def citations(text: str) -> list[str]:
    return [name for group in CITATION.findall(text) for name in re.findall(r'"([^"]+)"', group)]


def test_citations_name_existing_sections():
    known = sections()
    assert {"MM-RoPE", "AR-DF", "Generation", "KV cache and rollback"} <= known
    cited = {}
    for file in project_files():
        for name in citations(file.read_text(encoding="utf-8", errors="replace")):
            cited.setdefault(name, []).append(str(file.relative_to(ROOT)))
    missing = {name: files for name, files in cited.items() if name not in known}
    assert cited and not missing, f"citations of sections docs/design.md lacks: {missing}"


def test_no_citation_of_the_external_spec():
    found = [
        f"{file.relative_to(ROOT)}:{i}"
        for file in project_files()
        for i, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if SPEC.search(line)
    ]
    assert not found, f"cite docs/design.md instead of the SPEC: {found}"


def test_the_files_it_points_to_exist():
    named = set(re.findall(r"`((?:[\w.]+/)+[\w.]+\.(?:py|md))`", DOC.read_text()))
    assert len(named) > 20
    missing = [n for n in named if not ((ROOT / "src" / "lumos" / n).exists() or (ROOT / n).exists())]
    assert not missing, missing


def test_citation_pattern():
    text = 'x (docs/design.md,\n    "Generation") y docs/design.md, "AR-DF" and "MM-RoPE".'
    assert citations(text) == ["Generation", "AR-DF", "MM-RoPE"]
