"""Print the config reference (every key, its default and meaning) as Markdown tables.

The README's "Configuration reference" section is this script's output; a test checks that they
agree, so the documentation cannot drift from the schema.

    python scripts/config_reference.py
"""

from __future__ import annotations

import typing

import yaml
from pydantic import BaseModel

from segmenter.config import Config


def _type_name(annotation: object) -> str:
    text = str(annotation).replace("typing.", "")
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(str(a) for a in typing.get_args(annotation))
    return text.replace("<class '", "").replace("'>", "").replace("|", "\\|")


def _default(value: object) -> str:
    if isinstance(value, BaseModel):
        return ""
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return "`" + text.removesuffix("\n...").removesuffix("...").strip() + "`"


def reference() -> str:
    """Markdown tables, one per section, in schema order."""
    lines: list[str] = []
    defaults = Config()

    def walk(model: BaseModel, prefix: str) -> None:
        rows = []
        nested = []
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                nested.append((name, value))
                continue
            rows.append(
                f"| `{prefix}{name}` | {_type_name(field.annotation)} | {_default(value)} "
                f"| {(field.description or '').replace('<', '&lt;')} |"
            )
        if rows:
            lines.append(f"#### `{prefix.rstrip('.')}`")
            lines.append("")
            lines.append("| key | type | default | meaning |")
            lines.append("| --- | --- | --- | --- |")
            lines.extend(rows)
            lines.append("")
        for name, value in nested:
            walk(value, f"{prefix}{name}.")

    for section in type(defaults).model_fields:
        walk(getattr(defaults, section), f"{section}.")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")
