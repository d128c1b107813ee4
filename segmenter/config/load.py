"""Resolving a config: YAML reading, layer merging, ``--set`` overrides and one-line errors.

Precedence, lowest first: schema defaults (or a run's saved config), the file a config
``extends:`` (and the files that one extends), the YAML file, then ``--set section.key=value``.
All layers are merged first and validated once by the schema in
:mod:`segmenter.config.schema`; a pydantic error becomes one line that names the file, the key
path and what is allowed, and suggests the nearest valid key for a typo.

``extends: photo.yaml`` (a top-level key) layers a file over another config file, so a variant
says only what differs. The path is relative to the file that names it (or absolute); the file
named may extend another. Sections merge key by key, as every layer does. ``extends`` is read
here and is no key of the schema: it never appears in the effective config or a run's saved
one. A missing file, a value that is not a path, a cycle or a file that is not a mapping is a
one-line :class:`ConfigError` naming the file and its ``extends``.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from segmenter.config.schema import (
    MAX_BATCH,
    MAX_VALIDATION_BYTES,
    MAX_WIDTH,
    MAX_YAML_CHARS,
    MAX_YAML_VALUES,
    Config,
)
from segmenter.errors import ConfigError


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: Config | None = None,
) -> Config:
    """Resolve a config: ``base`` (default: schema defaults) < the files the YAML file
    ``extends`` (farthest first) < YAML file < ``--set`` overrides.

    All layers are merged first and validated once, so a later layer can repair an earlier one
    (``--set model.depth=4 --set train.widths={64: 8}`` works in either order). An error names
    the layer that supplied the offending key. ``extends`` is resolved by :func:`read_layers`
    and left out of the result.

    Raises:
        ConfigError: one line naming the file (or ``--set``), the key path and what is allowed.
    """
    merged = (base or Config()).to_dict()
    origins: dict[tuple[Any, ...], tuple[int, str]] = {}
    layers = read_layers(path) if path is not None else []
    for level, (layer_path, tree) in enumerate(layers, start=1):
        merged = _merge(merged, tree, Config, origins, (), (level, str(layer_path)))
    for item in overrides:
        key, text = parse_override(item)
        parts = _set_path(merged, key, text, origin=f"--set {item}")
        origins[tuple(parts)] = (len(layers) + 1, "--set")
    return _validate(merged, origins, fallback=str(path) if path is not None else "config")


class _YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads YAML 1.2 floats such as ``1e-3`` as numbers."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names the same key twice (YAML silently keeps the last)."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"duplicate key {key!r} (lines {first} and {second})")
        self.key, self.first, self.second = key, first, second


class TooLargeError(yaml.YAMLError):
    """A document (or the values its aliases expand to) far larger than any config."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    """SafeLoader's mapping constructor, refusing a key given twice in one mapping."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise DuplicateKeyError(key, seen[key], line)
            seen[key] = line
        except TypeError:  # an unhashable key: the constructor reports it
            continue
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_YamlLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _expanded_size(value: Any, memo: dict[int, int]) -> int:
    """How many values ``value`` holds once every alias is expanded (shared nodes counted
    once per use, computed once per node, so a billion-laughs document is measured fast)."""
    if not isinstance(value, dict | list):
        return 1
    key = id(value)
    if key not in memo:
        memo[key] = 0  # a recursive alias counts as itself
        items = value.values() if isinstance(value, dict) else value
        memo[key] = 1 + sum(_expanded_size(item, memo) for item in items)
    return memo[key]


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 exponent floats (``1e-3``); never builds objects.

    Refuses duplicate keys and documents over :data:`MAX_YAML_CHARS` characters or
    :data:`MAX_YAML_VALUES` values after alias expansion (raised as ``yaml.YAMLError``).
    """
    if len(text) > MAX_YAML_CHARS:
        raise TooLargeError(f"{len(text):,} characters; a config is at most {MAX_YAML_CHARS:,}")
    value = yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass
    if _expanded_size(value, {}) > MAX_YAML_VALUES:
        raise TooLargeError(
            f"its aliases expand to more than {MAX_YAML_VALUES:,} values (a YAML alias bomb?)"
        )
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely; syntax errors name the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    try:
        raw = safe_load(text)
    except DuplicateKeyError as exc:
        raise ConfigError(
            f"{path}:{exc.second}: duplicate key '{exc.key}' (first on line {exc.first}); "
            "YAML would keep only the last"
        ) from None
    except TooLargeError as exc:
        raise ConfigError(f"{path}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of sections, got {_kind(raw)}")
    return raw


EXTENDS_KEY = "extends"


def read_layers(path: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """The YAML file at ``path`` and the files it ``extends``, as (file, mapping) layers,
    farthest first, each mapping without its ``extends`` key.

    ``extends: other.yaml`` is resolved relative to the folder of the file that names it (an
    absolute path as given); the file named may extend another in turn.

    Raises:
        ConfigError: one line naming the file and its ``extends``: the file named is missing,
            unreadable or not a mapping, the value is not a path, or the files extend in a cycle.
    """
    layers: list[tuple[Path, dict[str, Any]]] = []
    current, tree = Path(path), read_yaml(path)
    while True:
        named = EXTENDS_KEY in tree
        target = tree.pop(EXTENDS_KEY, None)
        layers.append((current, tree))
        if not named:
            return layers[::-1]
        where = f"{current}: {EXTENDS_KEY}"
        if not isinstance(target, str) or not target.strip() or "\0" in target:
            shown = f"a {_kind(target)}" if isinstance(target, dict | list) else repr(target)
            raise ConfigError(f"{where}: must be the path of a config file (got {shown})")
        parent = current.parent / target.strip()
        if _identity(parent) in {_identity(layer) for layer, _ in layers}:
            cycle = " -> ".join(str(layer) for layer in [*(p for p, _ in layers), parent])
            raise ConfigError(f"{where}: the files extend each other in a cycle: {cycle}")
        try:
            tree = read_yaml(parent)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        current = parent


def _identity(path: Path) -> Path:
    """The file ``path`` names, links resolved (as far as they resolve), to find a cycle."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop: the path itself
        return path.absolute()


def parse_override(item: str) -> tuple[str, str]:
    """Split ``section.key=value`` into the dotted key and the value's text."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item}: expected section.key=value")
    return key, text


def _parse_value(text: str, annotation: Any) -> Any:
    """A ``--set`` value: text for string keys (``data.source=2024``), YAML for the rest."""
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
        unquoted = stripped[1:-1]  # --set 'data.source="2024"' means the text 2024
    else:
        unquoted = stripped
    if annotation is str:
        return unquoted
    if annotation == (str | None):
        return None if stripped in {"null", "~", ""} else unquoted
    if not stripped:
        return ""
    try:
        return safe_load(text)
    except yaml.YAMLError:
        return text


def _merge(
    base: dict[str, Any],
    update: dict[str, Any],
    schema: type[BaseModel],
    origins: dict[tuple[Any, ...], tuple[int, str]],
    prefix: tuple[Any, ...],
    origin: tuple[int, str],
) -> dict:
    """Deep-merge ``update`` into ``base`` through sections; other values are replaced whole.

    A mapping such as ``train.widths`` given in YAML replaces the default mapping, so a file that
    lists two widths trains two widths. An empty section (``train:``) changes nothing. Unknown
    keys are carried along for validation to reject. ``origins`` records who set each key.
    """
    out = dict(base)
    for key, value in update.items():
        sub = _section_type(schema, key)
        if sub is not None and value is None:
            continue
        if sub is not None and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, sub, origins, (*prefix, key), origin)
        else:
            out[key] = value
            origins[(*prefix, key)] = origin
    return out


def _section_type(schema: type[BaseModel], key: Any) -> type[BaseModel] | None:
    field = schema.model_fields.get(key) if isinstance(key, str) else None
    ann = field.annotation if field else None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _set_path(tree: dict[str, Any], dotted: str, text: str, origin: str) -> list[Any]:
    parts = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    node: Any = tree
    schema: type[BaseModel] | None = Config
    for depth, part in enumerate(parts[:-1]):
        if schema is not None and isinstance(part, str) and part not in schema.model_fields:
            raise ConfigError(_unknown_key_message(origin, parts[: depth + 1], schema))
        if not isinstance(node.get(part), dict):
            if part in node and node[part] is not None:
                where = ".".join(map(str, parts[: depth + 1]))
                raise ConfigError(f"{origin}: {where} is a {_kind(node[part])}, not a section")
            node[part] = {}
        schema = _section_type(schema, part) if schema is not None else None
        node = node[part]
    last = parts[-1]
    annotation = None
    if schema is not None and isinstance(last, str):
        if last not in schema.model_fields:
            raise ConfigError(_unknown_key_message(origin, parts, schema))
        annotation = schema.model_fields[last].annotation
    node[last] = _parse_value(text, annotation)
    return parts


def _validate(
    tree: dict[str, Any], origins: dict[tuple[Any, ...], tuple[int, str]], fallback: str
) -> Config:
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as exc:
        errors = exc.errors()
        loc = _clean_loc(list(errors[0].get("loc", ())))
        origin = _origin_of([tuple(loc)], origins, fallback)
        raise ConfigError(_format_error(errors, origin)) from None
    problem = _consistency_problem(cfg)
    if problem is not None:
        keys, message = problem
        raise ConfigError(f"{_origin_of(keys, origins, fallback)}: {message}")
    return cfg


def _origin_of(
    keys: list[tuple[Any, ...]], origins: dict[tuple[Any, ...], tuple[int, str]], fallback: str
) -> str:
    """The highest-precedence layer that set any of ``keys`` (or a key inside/around them)."""
    best: tuple[int, str] | None = None
    for key in keys:
        for set_key, origin in origins.items():
            n = min(len(key), len(set_key))
            if key[:n] == set_key[:n] and (best is None or origin[0] > best[0]):
                best = origin
    return best[1] if best else fallback


def _consistency_problem(cfg: Config) -> tuple[list[tuple[Any, ...]], str] | None:
    """Rules that span keys (widths the network can take): the keys involved and a message."""
    multiple = 2**cfg.model.depth
    depth = ("model", "depth")
    if not cfg.train.widths:
        return [("train", "widths")], "train.widths: at least one patch width is needed"
    for width, batch in cfg.train.widths.items():
        key = ("train", "widths", width)
        if width < multiple or width % multiple:
            return [key, depth], (
                f"train.widths.{width}: patch width must be a positive multiple of "
                f"2^model.depth = {multiple} (model.depth = {cfg.model.depth})"
            )
        if width > MAX_WIDTH:
            return [key], f"train.widths.{width}: patch width must be <= {MAX_WIDTH}"
        if batch < 1:
            return [key], f"train.widths.{width}: batch size must be >= 1 (got {batch})"
        if batch > MAX_BATCH:
            return [key], f"train.widths.{width}: batch size must be <= {MAX_BATCH} (got {batch})"
        needed = cfg.train.validation_batches * batch * width * width * 4 * 4
        if cfg.train.validation_batches > 1 and needed > MAX_VALIDATION_BYTES:
            return [("train", "validation_batches"), key], (
                f"train.validation_batches: {cfg.train.validation_batches} batches of "
                f"{batch} patches of {width} px would hold {needed / 2**30:.1f} GiB in memory "
                f"(limit {MAX_VALIDATION_BYTES / 2**30:.0f} GiB); lower it or the batch size"
            )
    for width in cfg.predict.widths or []:
        if width < multiple or width % multiple or width > MAX_WIDTH:
            return [("predict", "widths"), depth], (
                f"predict.widths: {width} is not a positive multiple of "
                f"2^model.depth = {multiple} up to {MAX_WIDTH}"
            )
    for width, count in cfg.predict.random_windows.items():
        if count < 1 or width < 1 or count > 10_000_000 or width > MAX_WIDTH:
            return [("predict", "random_windows", width)], (
                f"predict.random_windows.{width}: width must be 1..{MAX_WIDTH} and window "
                f"count 1..10000000 (got {count})"
            )
    return None


def _format_error(errors: list[dict[str, Any]], origin: str) -> str:
    err = errors[0]
    raw_loc = list(err.get("loc", ()))
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return _unknown_key_message(origin, raw_loc, _schema_at(raw_loc[:-1]))
    loc = _clean_loc(raw_loc)
    where = ".".join(str(p) for p in loc).replace(".[key]", " (a key)") or "(top level)"
    # A union (``int | str``) fails once per member: say every way the value could be right.
    messages = []
    for other in errors:
        if _clean_loc(list(other.get("loc", ()))) == loc:
            text = str(other.get("msg", "invalid value"))
            if other.get("type") == "value_error":  # a validator's own words, without the tag
                text = text.removeprefix("Value error, ")
            text = _lower_first(text)
            if text not in messages:
                messages.append(text)
    message = " or ".join(messages)
    if kind in {"model_type", "model_attributes_type", "dict_type"} and loc:
        message = "must be a mapping of keys"
    shown = err.get("input")
    got = "" if kind == "missing" else f" (got {shown!r})"
    if isinstance(shown, dict | list) and len(repr(shown)) > 60:
        got = f" (got a {_kind(shown)})"
    return f"{origin}: {where}: {message}{got}"


def _clean_loc(loc: list[Any]) -> list[Any]:
    """Drop pydantic's union-member tags (``int``, ``str``) that follow a leaf key."""
    out: list[Any] = []
    schema: type[BaseModel] | None = Config
    for i, part in enumerate(loc):
        if schema is not None:
            out.append(part)
            schema = _section_type(schema, part)
        elif isinstance(part, int) or part == "[key]":
            out.append(part)
        elif i + 1 < len(loc) and loc[i + 1] == "[key]":
            out.append(part)
    return out


def _unknown_key_message(origin: str, loc: list[Any], schema: type[BaseModel] | None) -> str:
    key = loc[-1]
    where = ".".join(str(p) for p in loc)
    valid = list(schema.model_fields) if schema is not None else []
    if schema is Config and len(loc) == 1 and not origin.startswith("--set"):
        valid.append(EXTENDS_KEY)  # a file's top level also takes extends (read_layers)
    hint = ""
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    if close:
        hint = f"; did you mean '{'.'.join(str(p) for p in loc[:-1] + [close[0]])}'?"
    allowed = f" (valid keys: {', '.join(valid)})" if valid and not close else ""
    return f"{origin}: {where}: unknown key{hint}{allowed}"


def _schema_at(loc: list[Any]) -> type[BaseModel] | None:
    schema: type[BaseModel] | None = Config
    for part in loc:
        if schema is None:
            return None
        schema = _section_type(schema, part)
    return schema


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _kind(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string"}.get(type(value), type(value).__name__)
