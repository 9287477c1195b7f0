"""The inventory file's YAML: read into plain data with every value's line, then validated by the models
of `importer_model`, whose errors come back as Problems at FILE:LINE.

What only the YAML shows is checked here: syntax, duplicate keys, merge keys, keys that are not
strings, and aliases (refused for entities, shared rather than copied elsewhere, so a small file cannot
expand into an enormous one). Every problem is collected with its line instead of stopping at the first.
Knows nothing of files on disk or of the database.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from inventory.importer_model import (
    Customer,
    Inventory,
    OnCall,
    Part,
    Place,
    Release,
    VendorBlackout,
    cross_checks,
    keys_of,
    refused_alias,
    show,
)


@dataclass(frozen=True)
class Problem:
    path: str
    line: int | None  # None only when the file as a whole is unusable (cannot be read)
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


class InventoryError(ValueError):
    """An inventory that cannot be imported; `errors` lists every problem found."""

    def __init__(self, errors: list[Problem]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(map(str, self.errors)))


Loc = tuple[Any, ...]
MAX_FILE_BYTES = 64 * 1024 * 1024  # a 2,000-cluster inventory is a few MB at most
_SCALARS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "null": "null",
    "timestamp": "a date",
}
_KNOWN_TAGS = {f"tag:yaml.org,2002:{tag}" for tag in ("str", "int", "float", "bool", "null", "timestamp")}
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "true or false",
    "list_type": "a list",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
    "date_type": "a date",
    "datetime_type": "a date-time",
    "strs_type": "a string or a list of strings",
}


class _Odd:
    """A scalar with a tag the inventory has no use for (e.g. !vault, !!binary, !!python/...): of no
    type any key takes, so it is refused naming the tag, never imported as the text after the tag."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def _describe_node(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        tag = node.tag.removeprefix("tag:yaml.org,2002:")
        return "nothing (null)" if tag == "null" else f"{_SCALARS.get(tag, tag)} {show(node.value)}"
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"


def _describe_value(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a number"),
        (datetime, "a date-time"),
        (date, "a date"),
        (_Odd, "a tagged value"),
        (str, "a string"),
    ]
    for kind, name in kinds:
        if isinstance(value, kind):
            return f"{name} {show(str(value))}"
    return "a list" if isinstance(value, list) else "a mapping"


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


def line_of(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class InventoryYaml:
    """One file's text, read into `data` (plain dicts, lists and scalars) with each value's node by its
    path (`nodes`, and `key_nodes` for mapping keys); `problems` holds what was found on the way."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.problems: list[Problem] = []
        self.nodes: dict[Loc, yaml.Node] = {}
        self.key_nodes: dict[Loc, yaml.Node] = {}
        self._aliases: dict[int, yaml.Node] = {}
        self._built: dict[int, Any] = {}  # id(anchored node) -> its data, shared by every alias
        self._building: set[int] = set()
        self._constructor = yaml.constructor.SafeConstructor()
        self.data: Any = None
        self.readable = False  # the YAML was read into `data` (which may be None: a null document)
        root = self._compose(text)
        self._anchor_ids = {id(node) for node in self._aliases.values()}
        if root is None and not self.problems:
            self.problems.append(Problem(path, 1, "the file is empty; expected a mapping with 'customers'"))
        elif root is not None:
            try:
                self.data = self._build(root, ())
                self.readable = True
            except RecursionError:
                self.problems.append(Problem(path, 1, "YAML syntax: nested too deeply"))
                self.data = None

    def err(self, node: yaml.Node, message: str) -> None:
        self.problems.append(Problem(self.path, line_of(node), message))

    def _compose(self, text: str) -> yaml.Node | None:
        loader: _Loader | None = None
        try:
            loader = _Loader(text)
            root = loader.get_single_node()
            self._aliases = loader.aliases
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

    _REFUSED = object()

    def _build(self, node: yaml.Node, path: Loc | None) -> Any:
        """The node's data. `path` None: inside an alias, where values are shared and not located."""
        if path is not None:
            self.nodes[path] = node
            anchored = self._aliases.get(id(node))
            if anchored is not None:
                if (what := refused_alias(path)) is not None:
                    self.err(node, f"{what}: YAML aliases (*name) cannot be used here; write each one out")
                    return self._REFUSED
                return self._shared(anchored)
        else:
            node = self._aliases.get(id(node), node)
            return self._shared(node)
        return self._fresh(node, path)

    def _shared(self, node: yaml.Node) -> Any:
        key = id(node)
        if key in self._building:
            self.err(node, "YAML alias refers to itself")
            return None
        if key not in self._built:
            self._building.add(key)
            self._built[key] = self._fresh(node, None)
            self._building.discard(key)
        return self._built[key]

    def _fresh(self, node: yaml.Node, path: Loc | None) -> Any:
        if isinstance(node, yaml.SequenceNode):
            items: list[Any] = []
            for item in node.value:
                value = self._build(item, None if path is None else (*path, len(items)))
                if value is self._REFUSED:
                    continue
                items.append(value)
            if path is not None and id(node) in self._anchor_ids:
                self._built[id(node)] = items
            return items
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        return self._scalar(node)

    def _mapping(self, node: yaml.MappingNode, path: Loc | None) -> dict[str, Any]:
        data: dict[str, Any] = {}
        lines: dict[str, int] = {}
        what = Place(path).label if path is not None else "mapping"
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key_node.tag.endswith(":merge"):
                self.err(key_node, f"{what}: merge keys ('<<') are not supported; write the keys out")
            elif not key_node.tag.endswith(":str") or not isinstance(key, str):
                self.err(key_node, f"{what}: keys must be strings, got {_describe_node(key_node)}")
            elif key in lines:
                self.err(key_node, f"{what}: duplicate key {show(key)} (first at line {lines[key]})")
            else:
                lines[key] = line_of(key_node)
                here = None if path is None else (*path, key)
                if here is not None:
                    self.key_nodes[here] = key_node
                value = self._build(value_node, here)
                data[key] = [] if value is self._REFUSED else value
        if path is not None and id(node) in self._anchor_ids:
            self._built[id(node)] = data
        return data

    def _scalar(self, node: yaml.Node) -> Any:
        if node.tag not in _KNOWN_TAGS:
            return _Odd(node.value)
        try:
            return self._constructor.construct_object(node)
        except Exception:  # e.g. a timestamp that is no date: the model reports the text
            return node.value

    # --- validating ---------------------------------------------------------------------------------

    def validate(self, role_addresses: frozenset[str] = frozenset()) -> Inventory | None:
        """The file's Inventory, or None with every problem in `problems` (in line order)."""
        if not self.readable:
            return None
        inventory: Inventory | None = None
        errors: list[ErrorDetails] = []
        try:
            inventory = Inventory.model_validate(self.data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        except RecursionError:
            self.problems.append(Problem(self.path, 1, "nested too deeply"))
            return None
        except Exception as exc:  # pragma: no cover - a bug here must still not be a traceback
            self.problems.append(Problem(self.path, 1, f"internal error, please report: {exc!r}"))
            return None
        for error in errors:
            self.problems.append(self._problem(error))
        bad = [Place(tuple(error["loc"])).path for error in errors]

        def ok(path: Loc) -> bool:
            return not any(where[: len(path)] == path or path[: len(where)] == where for where in bad)

        for where, message, first in cross_checks(self.data, ok, role_addresses):
            if first is not None and "{first}" in message:
                message = message.replace("{first}", f"line {self.line(first)}")
            elif first is not None:
                message += f" (first at line {self.line(first)})"
            self.problems.append(Problem(self.path, self.line(where), message))
        self.problems = sorted(dict.fromkeys(self.problems), key=lambda problem: problem.line or 0)
        return None if self.problems else inventory

    def line(self, path: Loc, *, key: bool = False) -> int:
        """The line of the value at `path` (or of its key), else of the nearest enclosing value."""
        if key and path in self.key_nodes:
            return line_of(self.key_nodes[path])
        while path and path not in self.nodes:
            path = path[:-1]
        return line_of(self.nodes[path]) if path in self.nodes else 1

    def _problem(self, error: ErrorDetails) -> Problem:
        place = Place(tuple(error["loc"]))
        if error["type"] == "missing":
            line = self.line(place.path[:-1])
        elif error["type"] == "extra_forbidden":
            line = self.line(place.path, key=True)
        elif error["type"] == "union_tag_invalid":
            line = self.line((*place.path, "type"))
        else:
            line = self.line(place.path)
        return Problem(self.path, line, explain(error, node=self.nodes.get(place.path)))


def explain(error: ErrorDetails, *, root: type[Part] = Inventory, node: yaml.Node | None = None) -> str:
    """A pydantic error as one line naming the key and the value, e.g. "node: port: 70000 is not a port
    number (1-65535)"; `node`, the value's YAML, describes it as written."""
    loc = tuple(error["loc"])
    place = Place(loc, root)
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"{place.what}: missing required key {loc[-1]!r}"
    if kind == "extra_forbidden":
        return f"{place.what}: unknown key {show(loc[-1])} (allowed: {', '.join(keys_of(place.model))})"
    if kind == "union_tag_invalid":
        tags = str(ctx.get("expected_tags", "")).replace("'", "")
        if isinstance(value, dict) and value.get("type") is None:
            return f"{place.holder}: type: expected one of {tags}, got nothing (null)"
        return f"{place.holder}: type: {show(ctx.get('tag'))} is not one of {tags}"
    if kind == "union_tag_not_found":
        return f"{place.holder}: missing required key 'type'"
    if kind == "region":  # scheduling's message names the key already
        return error["msg"]
    if kind in _EXPECTED:
        got = _describe_node(node) if node is not None else _describe_value(value)
        quote = kind == "string_type" and isinstance(node, yaml.ScalarNode)
        message = f"expected {_EXPECTED[kind]}, got {got}" + ("; quote it" if quote else "")
    elif kind == "literal_error":
        allowed = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        if value is None:
            message = f"expected one of {allowed}, got nothing (null)"
        else:
            message = f"{show(value)} is not one of {allowed}"
    else:  # our checks' findings ("inventory"), and pydantic's own wording for anything else
        message = error["msg"]
    return f"{place.label}: {message}"


@dataclass(frozen=True)
class InventoryDoc:
    """A valid inventory file: its models, and where in the file each part was (for refusals that only
    the database can show, such as a cluster under an active upgrade run)."""

    path: Path
    sha256: str  # of the file's bytes, for the audit trail
    inventory: Inventory
    lines: Callable[[Loc], int]

    @property
    def customers(self) -> list[Customer]:
        return self.inventory.customers

    @property
    def releases(self) -> list[Release]:
        return self.inventory.releases

    @property
    def vendor_blackouts(self) -> list[VendorBlackout] | None:
        """None: the file has no `vendor_blackouts` key (the database's stay as they are)."""
        return self.inventory.vendor_blackouts

    @property
    def oncall(self) -> OnCall | None:
        return self.inventory.oncall

    def refuse(self, problems: Iterable[tuple[Loc, str]]) -> None:
        """Raise InventoryError listing every (where in the file, message), if there is any: for the
        refusals only the database can show (inventory.importer_db), before anything is written."""
        found = [Problem(str(self.path), self.lines(where), message) for where, message in problems]
        if found:
            raise InventoryError(found)


def shown_name(path: Path) -> str:
    """The file's path fit for one line of a terminal: control characters (a newline, a terminal's escape
    sequence) as \\n, \\x1b, since a name is the operator's and the line it is shown in is Upkeep's. A byte
    that is not UTF-8 stays as Python holds it (a lone surrogate): --json keeps it losslessly as \\udcff
    and stderr shows it so (`_name_not_utf8` refuses such a name once the file is read)."""
    return "".join(
        char if char.isprintable() or "\udc80" <= char <= "\udcff" else char.encode("unicode_escape").decode()
        for char in str(path)
    )


def _name_not_utf8(path: Path) -> Problem | None:
    """A file name that is not UTF-8 (raw bytes, which Python holds as lone surrogates) is refused: the
    import's audit event records which file it was, and no text column holds those bytes. The name is
    shown with them escaped (\\xff), so the message prints on any output. A UTF-8 name that an ASCII
    locale decoded byte by byte is UTF-8 all the same (`recorded_name`)."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = f"byte {raw[exc.start]:#04x}"
        if b"/" in raw[exc.start :]:  # a directory's name: the file's own is UTF-8
            message = f"the file's path is not UTF-8 ({byte}); rename it to import the file"
        else:
            message = f"the file's name is not UTF-8 ({byte}); rename the file to import it"
        return Problem(shown_name(Path(raw.decode("utf-8", "backslashreplace"))), None, message)
    return None


def recorded_name(path: Path) -> str:
    """The file's name as text for the record: its bytes read as UTF-8 (refused before when they are not,
    `_name_not_utf8`; escaped here all the same rather than fail)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def read_inventory(path: Path, *, role_addresses: frozenset[str] = frozenset()) -> InventoryDoc:
    """Read, parse and validate the whole file; raise InventoryError listing every problem. Portal users
    whose local part is in `role_addresses` are refused (issue #17: people, not role addresses)."""
    name = shown_name(path)
    try:
        with Path(path).open("rb") as file:  # read at most one byte past the limit: /dev/zero never ends
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise InventoryError([Problem(name, None, f"cannot read the file: {exc.strerror or exc}")]) from None
    if len(data) > MAX_FILE_BYTES:
        message = f"the file is larger than {MAX_FILE_BYTES} bytes; an inventory is far smaller"
        raise InventoryError([Problem(name, None, message)])
    if problem := _name_not_utf8(path):
        raise InventoryError([problem])
    try:
        source = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1  # in bytes, as an editor's hex view
        where = f"byte {data[exc.start]:#04x} at column {column}"
        raise InventoryError([Problem(name, line, f"not UTF-8 text ({where})")]) from None
    document = InventoryYaml(name, source)
    inventory = document.validate(role_addresses)
    if inventory is None:
        raise InventoryError(document.problems)
    return InventoryDoc(Path(path), hashlib.sha256(data).hexdigest(), inventory, document.line)
