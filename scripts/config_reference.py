"""Print the config reference (every key, its default and meaning) as Markdown tables.

The reference in docs/configuration.md (between its ``config-reference`` markers) is this script's
output; tests/test_readme.py checks that they agree, so the documentation cannot drift from the
schema.

    python scripts/config_reference.py
"""

from __future__ import annotations

import types
import typing

import yaml
from pydantic import BaseModel

from segmenter.config import Config


def _type_name(annotation: object) -> str:
    """A type as a user reads it: ``int ≥ 1 | str``, ``dict[int, int]``, ``a | b`` for choices."""
    return _readable(annotation).replace("|", "\\|")


def _readable(annotation: object) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin is typing.Annotated:
        return " ".join([_readable(args[0]), *(_constraint(m) for m in args[1:])]).strip()
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_readable(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_readable(a) for a in args)}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _constraint(meta: object) -> str:
    """pydantic/annotated-types metadata (``Ge(ge=1)``, ``MinLen(1)``, a ``FieldInfo``)."""
    parts = []
    for item in getattr(meta, "metadata", None) or [meta]:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                parts.append(f"{sign} {getattr(item, attr)}")
        if getattr(item, "min_length", None):
            parts.append("non-empty")
    return " ".join(parts)


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
