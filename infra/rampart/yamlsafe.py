"""A strict YAML reader for the hand-edited files the whole platform is derived from.

``yaml.safe_load`` is safe against code execution, not against the mistakes and attacks a trusted input
file must survive: it lets the last of two duplicate keys win silently, expands aliases without bound (a
4 KB "billion laughs" file becomes gigabytes), recurses once per nesting level (RecursionError), and
reads any text it is handed. Here a file must be UTF-8 (a UTF-8 BOM is tolerated), at most
:data:`MAX_BYTES`, nested at most :data:`MAX_DEPTH` deep, free of anchors, aliases and merge keys, and
every mapping key must be a scalar that appears once. Every refusal is a :class:`YamlRefused` naming the
key path (``hosts.bot01.zone``, ``flows[3]``) and the line.

The checks run over PyYAML's event stream (the C parser when available), which never recurses and never
expands an alias, before anything is composed or constructed.
"""

from __future__ import annotations

import codecs
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a 1000-host topology is ~60 KB
MAX_DEPTH = 32  # a topology needs 4 levels

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlRefused(ValueError):
    """The file cannot be used: ``path`` is the key path (or ``(file)``/``(top)``), ``problem`` says why."""

    def __init__(self, path: str, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")


def decode(data: bytes) -> str:
    """UTF-8 text from bytes, refusing the encodings editors sometimes save in by mistake."""
    if len(data) > MAX_BYTES:
        raise YamlRefused("(file)", f"larger than {MAX_BYTES} bytes: not a topology file")
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if data.startswith(bom):
            raise YamlRefused("(file)", f"encoded as {name}: save it as UTF-8")
    if b"\x00" in data:
        raise YamlRefused("(file)", "contains NUL bytes (UTF-16 without a BOM?): save it as UTF-8")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise YamlRefused(f"line {line}", f"not UTF-8 (byte 0x{data[exc.start]:02x}): save it as UTF-8") from None


def _line(event: yaml.Event) -> str:
    return f"line {event.start_mark.line + 1}" if event.start_mark else "(file)"


class _Frame:
    __slots__ = ("path", "mapping", "key", "seen", "index")

    def __init__(self, path: str, mapping: bool):
        self.path, self.mapping = path, mapping
        self.key: str | None = None  # the key whose value comes next (mappings)
        self.seen: dict[str, int] = {}  # key → line it first appeared on
        self.index = 0  # the next item's index (sequences)

    def child(self) -> str:
        if self.mapping:
            return f"{self.path}.{self.key}" if self.path != "(top)" else str(self.key)
        return f"{self.path}[{self.index}]"

    def consumed(self) -> None:
        if self.mapping:
            self.key = None
        else:
            self.index += 1


def check_structure(text: str) -> None:
    """Walk the event stream once; refuse anchors, aliases, merge keys, non-scalar or duplicate keys and
    nesting beyond MAX_DEPTH, naming the key path where it happens."""
    stack: list[_Frame] = []

    def here() -> str:
        return stack[-1].child() if stack else "(top)"

    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            raise YamlRefused(here(), f"alias *{event.anchor} ({_line(event)}): aliases are not allowed "
                              "in a topology file; write the value out")
        if isinstance(event, yaml.NodeEvent) and event.anchor is not None:
            raise YamlRefused(here(), f"anchor &{event.anchor} ({_line(event)}): anchors are not allowed "
                              "in a topology file; write the value out")
        top = stack[-1] if stack else None
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if top is not None and top.mapping and top.key is None:
                raise YamlRefused(top.path, f"a mapping key must be a plain value, not a collection ({_line(event)})")
            if len(stack) >= MAX_DEPTH:
                raise YamlRefused(here(), f"nested more than {MAX_DEPTH} levels deep ({_line(event)})")
            stack.append(_Frame(here(), isinstance(event, yaml.MappingStartEvent)))
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            stack.pop()
            if stack:
                stack[-1].consumed()
        elif isinstance(event, yaml.ScalarEvent):
            if top is not None and top.mapping and top.key is None:
                key = event.value
                if key == "<<" and event.implicit[0]:  # plain, so YAML reads it as a merge
                    raise YamlRefused(top.path, f"merge key '<<' ({_line(event)}): not allowed in a topology file")
                top.key = key
                line = event.start_mark.line + 1 if event.start_mark else 0
                if key in top.seen:
                    raise YamlRefused(top.child(), f"duplicate key (line {line}; first at line "
                                      f"{top.seen[key]}): remove one, the last would silently win")
                top.seen[key] = line
            elif top is not None:
                top.consumed()


class _StrictLoader(_Loader):  # type: ignore[misc,valid-type]
    """Backstop for what the event walk cannot see: keys that differ as text but not as values
    (``1`` and ``0x1``), and values Python refuses to build (an integer of 5000 digits, a 13th month)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:
                    raise yaml.constructor.ConstructorError(
                        None, None, "a mapping key must be a plain value", key_node.start_mark) from None
                if dup:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}: the last would silently win", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            if isinstance(exc, yaml.YAMLError):
                raise
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {exc}", node.start_mark) from None


def loads(data: bytes) -> Any:
    """Decode, check and load one YAML document; raise :class:`YamlRefused` for anything unusable."""
    text = decode(data)
    try:
        check_structure(text)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (a control character)
        line = text[:exc.position].count("\n") + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise YamlRefused(f"line {line}", f"not valid YAML: character {char!r} is not allowed") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}" if mark else "(file)"
        raise YamlRefused(where, f"not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise YamlRefused("(file)", f"not valid YAML: {exc}") from None
    except RecursionError:  # unreachable after the depth check; kept so no input can give a traceback
        raise YamlRefused("(file)", "nested too deeply") from None
