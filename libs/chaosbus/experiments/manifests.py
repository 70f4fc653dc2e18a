"""Reading experiment files: YAML or JSON, several documents, ``List`` kinds expanded,
bounded in size, depth and alias expansion before anything is parsed.

A manifest comes from a user's file or stdin, or from a Kubernetes object; either may
be hostile (a billion-laughs alias bomb, 100k levels of nesting that crash libyaml's
node builder, NaN), so every bound is checked on the way in.
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from .errors import SpecError

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader, but timestamps stay strings (as Kubernetes' own YAML reader keeps
    them), so a manifest from ``kubectl get -o yaml`` still fits in msgpack and JSON."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def load_documents(data: bytes | str, *, source: str) -> list[dict[str, Any]]:
    """The manifests in a YAML or JSON file: several documents, ``List`` kinds expanded.

    Refuses, before parsing, input over 1 MiB; then nesting deeper than 64, more than
    100,000 nodes counting every alias use (so alias bombs stop early), values YAML can
    hold but JSON cannot, and documents that are not maps. Empty documents are skipped.
    """
    if isinstance(data, str):
        if len(data) > MAX_DOCUMENT_BYTES:  # a character is at least one byte
            raise SpecError(f"{source}: larger than the {MAX_DOCUMENT_BYTES} byte limit")
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:
            raise SpecError(f"{source}: not valid Unicode text") from None
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
    else:
        raise SpecError(f"{source}: expected bytes or text, got {type(data).__name__}")
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise SpecError(f"{source}: {len(raw)} bytes is over the {MAX_DOCUMENT_BYTES} byte limit")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{source}: not UTF-8 text (bad byte at offset {exc.start})") from None
    if "\x00" in text:
        raise SpecError(f"{source}: contains a NUL byte; not a text file")

    documents = _load_json(text, source)
    if documents is None:
        documents = _load_yaml(text, source)
    out: list[dict[str, Any]] = []
    for index, doc in enumerate(documents, start=1):
        if doc is None:
            continue
        where = f"{source}: document {index}"
        check_tree(doc, where, finite=False)
        if not isinstance(doc, dict):
            raise SpecError(f"{where}: must be a map (a manifest), got {type_name(doc)}")
        kind = doc.get("kind")
        if isinstance(kind, str) and kind.endswith("List") and "items" in doc:
            items = doc["items"]
            if not isinstance(items, list):
                raise SpecError(f"{where}.items: must be a list of manifests")
            for number, item in enumerate(items):
                if not isinstance(item, dict):
                    raise SpecError(
                        f"{where}.items[{number}]: must be a map (a manifest), "
                        f"got {type_name(item)}"
                    )
                out.append(item)
            continue
        out.append(doc)
    return out


def _load_json(text: str, source: str) -> list[Any] | None:
    """One JSON document, or None when the text is not JSON (then it is read as YAML)."""
    if text.lstrip()[:1] not in ("{", "["):
        return None
    try:
        return [json.loads(text)]
    except RecursionError:
        raise SpecError(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        return None  # YAML flow style, or several documents: the YAML reader decides


def _load_yaml(text: str, source: str) -> list[Any]:
    try:
        # libyaml's event parser keeps its own stack, but building nodes recurses in C:
        # depth is checked on the events first, before anything recursive runs.
        depth = nodes = 0
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.NodeEvent):  # scalars, aliases, collection starts
                nodes += 1
                if nodes > MAX_NODES:
                    raise SpecError(f"{source}: more than {MAX_NODES} values")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    line = event.start_mark.line + 1 if event.start_mark else "?"
                    raise SpecError(f"{source}: line {line}: nested deeper than {MAX_DEPTH} levels")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        loader = _Loader(text)
        try:
            documents = []
            budget = MAX_NODES  # for the whole file, so many small bombs add up
            while loader.check_node():
                node = loader.get_node()
                budget = _count_nodes(node, budget, source)
                documents.append(loader.construct_document(node))
            return documents
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "not valid YAML"
        raise SpecError(f"{source}: {where}{problem}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML or JSON: {exc}") from None
    except RecursionError:
        raise SpecError(f"{source}: nested deeper than {MAX_DEPTH} levels") from None


def _count_nodes(root: yaml.Node, budget: int, source: str) -> int:
    """Count nodes as a reader of the result meets them (an alias counts every time it is
    used) against what is left of ``budget``; return what is left after this document."""
    stack = [root]
    while stack:
        node = stack.pop()
        budget -= 1
        if budget < 0:
            raise SpecError(f"{source}: more than {MAX_NODES} values once aliases are expanded")
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append(key)
                stack.append(value)
    return budget


def type_name(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def check_tree(doc: Any, where: str, *, finite: bool) -> None:
    """Depth, size and value types of a decoded document, without recursion.

    Only what JSON can carry is accepted (maps with string keys, lists, strings,
    numbers, booleans, null); with ``finite``, NaN and infinities are refused too, naming
    the field where they are.
    """
    seen = 0
    stack: list[tuple[Any, str, int]] = [(doc, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise SpecError(f"{_join(where, '')}: more than {MAX_NODES} values")
        if isinstance(value, dict | list) and depth > MAX_DEPTH:
            raise SpecError(f"{_join(where, '')}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise SpecError(f"{_join(where, path)}: keys must be strings, got {key!r}")
                stack.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                stack.append((item, f"{path}[{index}]", depth + 1))
        elif isinstance(value, float):
            if finite and not math.isfinite(value):
                raise SpecError(f"{_join(where, path)}: must be a finite number, got {value!r}")
        elif value is not None and not isinstance(value, str | int):
            raise SpecError(
                f"{_join(where, path)}: values of type {type(value).__name__} are not supported"
            )


def _join(where: str, path: str) -> str:
    if not where:
        return path or "manifest"
    return f"{where}: {path}" if path else where
