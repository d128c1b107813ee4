"""The README stays true: its config reference is the schema's, its Quick start has two blocks."""

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
    readme = (REPO / "README.md").read_text()
    match = re.search(
        r"<!-- config-reference:start -->\n(.*)<!-- config-reference:end -->", readme, re.S
    )
    assert match, "README has no generated config reference"
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
