"""Generic YAML walking for the inventory importer: the document composed with every node's position
(aliases keep their own), values checked against their expected kind and mappings against their field
rules (`importer_rules.Field`), every problem collected with its line instead of stopping at the first.
Knows nothing of the inventory's entities (`importer_parse`), of files on disk or of the database."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

import yaml

from inventory.importer_rules import Field, show
from inventory.importer_specs import Problem

_EXPECTED = {
    "str": "a string",
    "int": "an integer",
    "seq": "a list",
    "map": "a mapping",
    "time": "a date-time",
    "date": "a date",
    "bool": "true or false",
    "strs": "a string or a list of strings",
}
_TAGS = {"str": ("str",), "int": ("int",), "bool": ("bool",), "time": ("timestamp", "str")}
_TAGS["date"] = _TAGS["time"]
_SCALARS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean", "null": "null"}
BAD = object()  # what `YamlWalker.value` returns for a node it reported


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        tag = node.tag.removeprefix("tag:yaml.org,2002:")
        return "nothing (null)" if tag == "null" else f"{_SCALARS.get(tag, tag)} {show(node.value)}"
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"


class _Loader(yaml.SafeLoader):
    """Composes nodes only. An alias becomes a shallow copy of its anchor's node carrying the alias's own
    position, so problems point at the alias and re-used entities can be told apart and refused."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases: dict[int, yaml.Node] = {}  # id(copy) -> the anchored node

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        mark = self.peek_event().start_mark if self.check_event(yaml.AliasEvent) else None
        node = super().compose_node(parent, index)
        if mark is None or node is None:
            return node
        alias = copy.copy(node)
        alias.start_mark = mark
        self.aliases[id(alias)] = node
        return alias


class YamlWalker:
    """Walks one file's YAML nodes, collecting `problems`; `importer_parse` builds on it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[Problem] = []
        self.aliases: dict[int, yaml.Node] = {}
        self.memos: dict[tuple[int, str], Any] = {}
        self.constructor = yaml.constructor.SafeConstructor()

    def err(self, node: yaml.Node, message: str) -> None:
        self.problems.append(Problem(self.path, node.start_mark.line + 1, message))

    def compose(self, text: str) -> yaml.Node | None:
        loader: _Loader | None = None
        try:
            loader = _Loader(text)
            root = loader.get_single_node()
            self.aliases = loader.aliases
            return root
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            message = f"{exc.context}, {exc.problem}" if exc.context else f"{exc.problem}"
            self.problems.append(Problem(self.path, mark.line + 1 if mark else 1, f"YAML syntax: {message}"))
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else show(exc.character)
            self.problems.append(Problem(self.path, line, f"YAML syntax: character {char} is not allowed"))
        except RecursionError:
            self.problems.append(Problem(self.path, 1, "YAML syntax: nested too deeply"))
        except Exception as exc:  # never a traceback for a bad file
            self.problems.append(Problem(self.path, 1, f"YAML syntax: {type(exc).__name__}: {exc}"))
        finally:
            if loader is not None:
                loader.dispose()
        return None

    def value(self, node: yaml.Node, what: str, kind: str) -> Any:
        """The node's value if it is of `kind`; otherwise report it and return BAD."""
        if kind == "strs":  # one string, or a list of them (window days)
            items = node.value if isinstance(node, yaml.SequenceNode) else [node]
            ok = all(isinstance(i, yaml.ScalarNode) and i.tag.endswith(":str") for i in items)
            if ok:
                return node.value if isinstance(node, yaml.ScalarNode) else [i.value for i in items]
        elif kind in ("seq", "map"):
            ok = isinstance(node, yaml.SequenceNode if kind == "seq" else yaml.MappingNode)
        else:
            ok = (
                isinstance(node, yaml.ScalarNode)
                and node.tag.removeprefix("tag:yaml.org,2002:") in _TAGS[kind]
            )
        if not ok:
            hint = "; quote it" if kind == "str" and isinstance(node, yaml.ScalarNode) else ""
            self.err(node, f"{what}: expected {_EXPECTED[kind]}, got {_describe(node)}{hint}")
            return BAD
        if kind in ("seq", "map", "str"):
            return node if kind != "str" else node.value
        try:
            if node.tag.endswith(":str"):  # a quoted deadline or date
                return (date if kind == "date" else datetime).fromisoformat(node.value)
            return self.constructor.construct_object(node)
        except Exception:
            self.err(node, f"{what}: {show(node.value)} is not {_EXPECTED[kind]}")
            return BAD

    def mapping(
        self, node: yaml.Node, what: str, fields: dict[str, Field]
    ) -> tuple[dict[str, Any], dict[str, yaml.Node]]:
        """(valid values, nodes of all keys present); every problem is reported."""
        values: dict[str, Any] = {}
        nodes: dict[str, yaml.Node] = {}
        lines: dict[str, int] = {}
        if self.value(node, what, "map") is BAD:
            return values, nodes
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key_node.tag.endswith(":merge"):
                self.err(key_node, f"{what}: merge keys ('<<') are not supported; write the keys out")
            elif not key_node.tag.endswith(":str") or not isinstance(key, str):
                self.err(key_node, f"{what}: keys must be strings, got {_describe(key_node)}")
            elif key in lines:
                self.err(key_node, f"{what}: duplicate key {show(key)} (first at line {lines[key]})")
            elif key not in fields:
                self.err(key_node, f"{what}: unknown key {show(key)} (allowed: {', '.join(fields)})")
            else:
                lines[key] = line_of(key_node)
                kind, rule, required = fields[key]
                if not required and value_node.tag.endswith(":null"):
                    continue  # an optional key left empty (or null) means its default
                value = self.value(value_node, f"{what}: {key}", kind)
                problem = rule(value) if rule and value is not BAD else None
                if problem:
                    self.err(value_node, f"{what}: {key}: {problem}")
                elif value is not BAD:
                    values[key] = value
                nodes[key] = value_node
        for key, (_, _, required) in fields.items():
            if required and key not in lines:
                self.err(node, f"{what}: missing required key {key!r}")
        return values, nodes

    def unique(self, seen: dict[Any, int], key: Any, node: yaml.Node, message: str) -> None:
        if key in seen:
            self.err(node, f"{message} (first at line {seen[key]})")
        else:
            seen[key] = line_of(node)

    def items(self, node: yaml.Node | None, what: str) -> list[yaml.Node]:
        """The entries of an entity list. Aliased entities are refused: they could only be duplicates,
        and following them would let a small file expand into an enormous one."""
        if node is None or self.refuse_alias(node, what):
            return []
        return [item for item in node.value if not self.refuse_alias(item, what)]

    def refuse_alias(self, node: yaml.Node, what: str) -> bool:
        if id(node) in self.aliases:
            self.err(node, f"{what}: YAML aliases (*name) cannot be used here; write each one out")
        return id(node) in self.aliases

    def memo(self, node: yaml.Node, parse: Callable[[yaml.Node], Any]) -> Any:
        """Parse a re-usable part (contacts, access, from) once however often it is aliased."""
        key = (id(self.aliases.get(id(node), node)), parse.__name__)
        if key not in self.memos:
            self.memos[key] = parse(node)
        return self.memos[key]


def line_of(node: yaml.Node) -> int:
    return node.start_mark.line + 1
