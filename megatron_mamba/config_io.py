"""YAML files plus dotted command-line overrides → typed, validated config dataclasses.

`load(cls, path, ["train.learning_rate=3e-4", "model.layer_pattern=MMAM"])` reads the YAML,
applies each override (values parsed as YAML scalars), and builds `cls` field by field; an unknown
key, a missing required one, a value of the wrong type, a key given twice or a YAML syntax error
fails with one sentence naming its dotted path (or file and line). An empty section (`train:`)
means its defaults. `dump` gives the resolved config back as YAML (for `--dry-run` and for saving
next to checkpoints).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the typed config."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: plain YAML keeps the last
    silently, so a second `train:` block would replace the first."""

    def construct_mapping(self, node, deep=False):
        first_line = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # the base loader refuses it
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (first on line {first_line[key]})",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _parse_yaml(text: str, where: str, with_line: bool = True):
    """`text` parsed as YAML; a syntax error or repeated key names `where` (and the line)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f", line {mark.line + 1}" if with_line and mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{where}{line}: {problem}") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` entries set nested keys (creating levels as needed)."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} is not of the form key.sub=value")
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            if node.get(part) is None:  # absent, or an empty `part:` section
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node[leaf] = _parse_yaml(raw, f"override {override!r}", with_line=False)
    return data


def key_values(items: list[str], flag: str) -> dict[str, Any]:
    """`key=value` command-line settings (values read as YAML) as a dict."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{flag} {item!r} is not of the form key=value")
        out[key] = _parse_yaml(value, f"{flag} {item!r}", with_line=False)
    return out


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp, path: str):
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{path}: no type accepts {value!r}")
    if origin is typing.Literal:
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted no/yes as a boolean
            value = {False: "no", True: "yes"}[value] if "no" in typing.get_args(tp) else value
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}={value!r} must be one of {list(typing.get_args(tp))}")
        return value
    if _is_dataclass_type(tp):
        if dataclasses.is_dataclass(value):
            return value
        if value is None:  # an empty section: its defaults
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a section (mapping), got {value!r}")
        return build(tp, value, path)
    if origin in (tuple, list):
        if value is None:  # `key:` or key=null: none, as [] (a list of one None would fail)
            value = []
        elif not isinstance(value, list | tuple):
            value = [value]
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed length, e.g. a range
            if len(value) != len(args):
                raise ConfigError(f"{path}={value!r} must have {len(args)} items")
        else:
            args = [args[0] if args else Any] * len(value)
        pairs = enumerate(zip(value, args, strict=True))
        return origin(_convert(v, t, f"{path}[{i}]") for i, (v, t) in pairs)
    if origin is dict or tp is dict:
        if value is None:  # an empty section
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}={value!r} must be a number")
        try:  # YAML reads 1e-3 (no dot) as a string
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}={value!r} must be a number") from None
    if tp in (int, str, bool) and type(value) is not tp:
        if value is None:  # `key=` or key=null: the setting given no value
            raise ConfigError(f"{path} is empty (null); it takes a {tp.__name__} value")
        raise ConfigError(f"{path}={value!r} must be {tp.__name__}")
    return value


def build(cls, data: dict, path: str = ""):
    """An instance of dataclass `cls` from a mapping (nested sections become nested configs)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(f"unknown key(s) {unknown}{where}; known: {sorted(fields)}")
    missing = [
        name
        for name, f in fields.items()
        if name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{path or cls.__name__}: missing required key(s) {missing}")
    kwargs = {
        name: _convert(value, hints[name], f"{path}.{name}" if path else name)
        for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{path or cls.__name__}: {error}") from error


def load(cls, path: str | Path | None, overrides: list[str] | None = None):
    data = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            text = Path(path).read_text()
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path} is not a UTF-8 text file ({error.reason})") from None
        data = _parse_yaml(text, str(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level")
    return build(cls, apply_overrides(data, list(overrides or [])))


def to_dict(config) -> dict:
    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def dump(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
