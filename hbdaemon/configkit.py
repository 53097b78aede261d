"""Declarative YAML configuration: keys declared as dataclass fields, read from a file,
the environment and the command line, with errors that name file, line, key and what
is allowed.

This module is shared by hbdaemon and agentd, which ship separately and never import
each other: agentd/configkit.py is a byte-identical copy (tests/unit/test_shared_copies.py
keeps them equal). Edit hbdaemon/configkit.py and run `make sync-copies`.
"""

import dataclasses
import os
import re
from dataclasses import field
from typing import Dict, Optional, Tuple

import yaml

REQUIRED = object()


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so a hook's `on:` key stays "on"."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "tTfF":
    _Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(0, (
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")))


def yaml_load(text: str):
    """Parse YAML as this program reads it (YAML 1.2 booleans)."""
    return yaml.load(text, Loader=_Loader)


class ConfigError(Exception):
    """A configuration problem, worded for the operator: where, which key, what is allowed."""


def key(default, convert, doc: str = ""):
    """Declare a scalar key with its default and converter."""
    return field(default=default, metadata={"convert": convert, "doc": doc})


def section(cls):
    """Declare a nested mapping of keys."""
    return field(default_factory=cls, metadata={"section": cls})


def items(cls):
    """Declare a list of mappings, each read as `cls`."""
    return field(default=(), metadata={"items": cls})



def load(cls, path: str, *, env_prefix: str, environ: Dict[str, str],
         env_aliases: Optional[Dict[str, str]] = None, overrides: Optional[Dict[str, str]] = None,
         required: bool = False) -> Tuple[object, "Reader"]:
    """Build `cls` from the YAML file at `path`, then `env_aliases` (name -> key), then
    `env_prefix` variables, then `overrides` (key -> value), each winning over the one
    before. Returns the config and the Reader (for cross-key checks). Raises ConfigError.
    """
    raw, lines = _read_yaml(path, required)
    origins: Dict[str, str] = {}
    paths = _scalar_paths(cls)
    for name, dotted in (env_aliases or {}).items():
        if name in environ:
            _put(paths, raw, dotted, environ[name], origins, f"environment {name}")
    for dotted in paths:
        name = env_prefix + dotted.upper().replace(".", "_")
        if name in environ:
            _put(paths, raw, dotted, environ[name], origins, f"environment {name}")
    for dotted, value in (overrides or {}).items():
        if dotted not in paths:
            raise ConfigError(f"--set {dotted}: unknown key; known keys: {', '.join(sorted(paths))}")
        _put(paths, raw, dotted, value, origins, f"--set {dotted}")
    reader = Reader(path if os.path.exists(path) else "(defaults)", lines, origins)
    cfg = reader.build(cls, raw, "")
    if any(f.name == "source" for f in dataclasses.fields(cls)):
        cfg = dataclasses.replace(cfg, source=reader.source)
    return cfg, reader


def _read_yaml(path: str, required: bool):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such file") from None
        return {}, {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    lines = {}
    try:
        _key_lines(node, "", lines)
    except ConfigError as exc:
        raise ConfigError(f"{path}, {exc}") from None
    return data, lines


def _key_lines(node, prefix: str, out: dict) -> None:
    """Record the line of every key, so errors can point at it. A key given twice in one
    mapping is refused: YAML would keep the last silently (a second `http:` section
    appended to a file would drop the first one's token)."""
    if isinstance(node, yaml.MappingNode):
        seen: Dict[object, int] = {}
        for knode, vnode in node.value:
            dotted = f"{prefix}{knode.value}"
            line = knode.start_mark.line + 1
            if isinstance(knode, yaml.ScalarNode):
                if knode.value in seen:
                    raise ConfigError(f"line {line}: {dotted} is given twice (first at line "
                                      f"{seen[knode.value]}); say it once")
                seen[knode.value] = line
            out[dotted] = line
            _key_lines(vnode, dotted + ".", out)
    elif isinstance(node, yaml.SequenceNode):
        base = prefix.rstrip(".")
        for i, item in enumerate(node.value):
            out[f"{base}[{i}]"] = item.start_mark.line + 1
            _key_lines(item, f"{base}[{i}].", out)


def _scalar_paths(cls, prefix: str = "") -> Dict[str, dataclasses.Field]:
    """Every settable key path (sections flattened; lists count as one key)."""
    out = {}
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            out.update(_scalar_paths(f.metadata["section"], f"{prefix}{f.name}."))
        elif f.metadata:
            out[prefix + f.name] = f
    return out


def _put(paths: dict, raw: dict, dotted: str, value, origins: dict, origin: str) -> None:
    f = paths[dotted]
    if "items" in f.metadata and isinstance(value, str):
        try:
            value = yaml_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"{origin}: {dotted}: not valid YAML for a list") from None
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value
    origins[dotted] = origin


class Reader:
    """Walks the declarations, converting raw values and wording errors."""

    def __init__(self, source: str, lines: dict, origins: dict):
        self.source, self.lines, self.origins = source, lines, origins

    def where(self, dotted: str) -> str:
        if dotted in self.origins:
            return self.origins[dotted] + ": "
        line = self.lines.get(dotted)
        return f"{self.source}, line {line}: " if line else f"{self.source}: "

    def fail(self, dotted: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where(dotted)}{dotted}: {message}")

    def build(self, cls, data, prefix: str):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.fail(prefix.rstrip(".") or "(top)", "must be a mapping of keys")
        known = {f.name: f for f in dataclasses.fields(cls) if f.metadata}
        for name in data:
            if name not in known:
                raise self.fail(f"{prefix}{name}",
                                f"unknown key; allowed here: {', '.join(sorted(known))}")
        values = {}
        for name, f in known.items():
            dotted = prefix + name
            if "section" in f.metadata:
                values[name] = self.build(f.metadata["section"], data.get(name), dotted + ".")
            elif "items" in f.metadata:
                values[name] = self.build_items(f.metadata["items"], data.get(name), dotted)
            elif name in data:
                values[name] = self.convert(f, data[name], dotted)
            elif f.default is REQUIRED:
                raise self.fail(dotted, "required")
        return cls(**values)

    def build_items(self, cls, data, dotted: str) -> tuple:
        if data is None:
            return ()
        if not isinstance(data, list):
            raise self.fail(dotted, "must be a list")
        return tuple(self.build(cls, item, f"{dotted}[{i}].") for i, item in enumerate(data))

    def convert(self, f, value, dotted: str):
        if f.default is None and (value is None or value == ""):
            return None
        try:
            return f.metadata["convert"](value)
        except ValueError as exc:
            raise self.fail(dotted, f"{value!r} is not allowed; expected {exc}") from None
