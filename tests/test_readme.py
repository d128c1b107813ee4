"""The docs stay true: the config reference (docs/configuration.md) is the schema's, the
README's Quick start has two blocks (.ci/run runs the second), and relative links between the
README and docs/ lead to a file and a heading that exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_config_reference_matches_the_schema():
    script = REPO / "scripts" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (REPO / "docs" / "configuration.md").read_text()
    match = re.search(
        r"<!-- config-reference:start -->\n(.*)<!-- config-reference:end -->", page, re.S
    )
    assert match, "docs/configuration.md has no generated config reference"
    assert match.group(1) == module.reference(), "run: python scripts/config_reference.py"


def test_quick_start_has_exactly_two_shell_blocks():
    readme = (REPO / "README.md").read_text()
    section = re.search(r"^## Quick start\n(.*?)^## ", readme, re.S | re.M).group(1)
    blocks = re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M)
    assert len(blocks) == 2
    assert "segmenter train" in blocks[0] and "segmenter predict" in blocks[0]
    assert "pytest" in blocks[1]


def test_config_reference_types_read_as_a_user_writes_them():
    script = REPO / "scripts" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.reference()
    assert "| `data.water_class` | int ≥ 1 \\| str non-empty |" in text
    assert not any(word in text for word in ("Annotated", "FieldInfo", "Union", "typing"))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.*)$", text, re.M):
        slug, n = _slug(heading), 1
        while slug in found:
            slug, n = f"{_slug(heading)}-{n}", n + 1
        found.add(slug)
    return found


def test_relative_links_between_the_docs_resolve():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
