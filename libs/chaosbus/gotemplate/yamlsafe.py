"""What a text template cannot know: that an argument must stay one YAML scalar.

A sidecar template renders to YAML that becomes part of a pod spec, so an argument such
as `/data\nprivileged: true` must not add a key. Two checks: the argument values before
rendering, and the rendered text, where everything an action printed must lie inside
one YAML scalar.
"""

from __future__ import annotations

import unicodedata
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from ..yamlfast import SafeLoader
from .errors import ArgumentError, TemplateRenderError, line_col
from .fmt import go_quote
from .lex import go_rune
from .limits import MAX_DEPTH
from .nodes import Action

_LINE_BREAKS = "\n\r\x85\u2028\u2029"  # YAML 1.1, which PyYAML reads, has five
_LEADING = "-?:,[]{}#&*!|>'\"%@`<"  # YAML indicators (and `<<`, the merge key)


def _yaml_hazard(s: str) -> str | None:
    """Why s, pasted into a YAML line, could do more than be one scalar; None if safe."""
    if any(c in _LINE_BREAKS for c in s):
        return "contains a line break"
    for c in s:
        if unicodedata.category(c) in ("Cc", "Cs") or c in "\ufffe\uffff":
            return f"contains the control character {go_rune(c)}"
    if s != s.strip(" "):
        return "has leading or trailing spaces"
    if ": " in s or s.endswith(":"):
        return 'contains ": " or ends with ":" (a YAML mapping key)'
    if " #" in s:
        return 'contains " #" (a YAML comment)'
    if any(c in "\"'" for c in s):
        return "contains a quote"
    if any(c in "{}[]," for c in s):
        return "contains one of { } [ ] , (YAML flow syntax)"
    if "\\" in s:
        return "contains a backslash (an escape inside a double-quoted YAML string)"
    if s and s[0] in _LEADING:
        return f"starts with {s[0]!r}, a YAML indicator"
    if s.startswith("..."):
        return 'starts with "..." (the YAML document end marker)'
    return None


def _child(path: str, key: Any) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{go_quote(key) if isinstance(key, str) else repr(key)}]"


def _leaves(value: Any, path: str, depth: int, template: str) -> Iterator[tuple[str, str]]:
    """(path, string) for every string and every string key in an argument value."""
    if depth > MAX_DEPTH:
        raise ArgumentError(
            "value nested too deeply (or recursive)", template=template, argument=path
        )
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                yield f"{_child(path, key)} (the key)", key
            yield from _leaves(item, _child(path, key), depth + 1, template)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}[{i}]", depth + 1, template)
    elif value is not None and not isinstance(value, bool | int | float):
        raise ArgumentError(
            f"unsupported value of type {type(value).__name__}", template=template, argument=path
        )


def check_yaml_safe_arguments(args: Mapping[str, Any], template_name: str) -> None:
    """Refuse (ArgumentError, naming the argument) any string in args that, pasted into a
    YAML template, could change its structure: line breaks, control characters, `: `,
    ` #`, quotes, backslashes, flow brackets and commas, leading indicators such as `-`
    `*` `&` `!` `|` `>` `%` `@`, leading or trailing spaces. Paths, names, numbers and
    booleans pass. Nested lists and maps are checked element by element.
    """
    if not isinstance(args, Mapping):
        raise ArgumentError(
            f"arguments must be a mapping, not {type(args).__name__}", template=template_name
        )
    for key, value in args.items():
        for path, text in _leaves({key: value}, "", 0, template_name):
            hazard = _yaml_hazard(text)
            if hazard is not None:
                raise ArgumentError(
                    f"value {go_quote(text)} {hazard}, "
                    "which could change the YAML structure of the rendered template",
                    template=template_name,
                    argument=path,
                )


def _scalar_spans(roots: list[yaml.Node]) -> list[tuple[int, int]]:
    spans, stack, seen = [], list(roots), set()
    while stack:
        node = stack.pop()
        if id(node) in seen:  # aliases share nodes
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            spans.append((node.start_mark.index, node.end_mark.index))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
    return sorted(spans)


def check_spans_in_scalars(
    source: str, name: str, text: str, spans: list[tuple[int, int, Action]]
) -> None:
    """Refuse text (rendered from template source called name) unless it is YAML and
    every span an action printed lies inside one YAML scalar."""

    def location(action: Action) -> dict[str, Any]:
        line, column = line_col(source, action.pipe.pos)
        return {"line": line, "column": column, "context": action.pipe.src}

    try:
        roots = list(yaml.compose_all(text, Loader=SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        index = mark.index if mark is not None else getattr(exc, "position", len(text))
        culprit = [s for s in spans if s[0] <= index]  # the action printed last before it
        where = location(culprit[-1][2]) if culprit else {}
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TemplateRenderError(
            f"rendered text is not valid YAML: {problem}", template=name, **where
        ) from None
    except RecursionError:
        raise TemplateRenderError("rendered YAML nested too deeply", template=name) from None
    scalars = _scalar_spans(roots)
    starts = [start for start, _ in scalars]
    for start, end, action in spans:
        if not text[start:end].strip():
            continue
        k = bisect_right(starts, start) - 1
        if k < 0 or scalars[k][1] < end:
            raise ArgumentError(
                f"printed {go_quote(text[start:end])}, which is not inside one YAML scalar: "
                "it changes the structure of the rendered YAML",
                template=name,
                **location(action),
            )
