"""The executor: walks the tree with the arguments as dot and writes the output."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import Fail, TemplateRenderError, line_col
from .fmt import to_text
from .funcs import FUNCS
from .limits import MAX_OUTPUT, MAX_STEPS
from .nodes import (
    Action,
    Chain,
    Command,
    Control,
    Dot,
    Expr,
    Field,
    Func,
    Literal,
    Node,
    Pipe,
    Text,
    Variable,
)
from .values import go_type, sorted_keys, truth

_NONE = object()  # "no piped value", distinct from a piped nil


class Executor:
    """One rendering: the output so far, the variables in scope and the work done."""

    def __init__(self, source: str, name: str, data: Any, track: bool) -> None:
        self.source = source  # the template's text, for error locations
        self.name = name
        self.out: list[str] = []
        self.size = 0
        self.spans: list[tuple[int, int, Action]] = []
        self.track = track
        self.vars: list[list[Any]] = [["$", data]]  # [name, value], innermost last
        self.steps = 0

    def fail(self, node: Expr | Command, reason: str) -> TemplateRenderError:
        line, column = line_col(self.source, node.pos)
        return TemplateRenderError(
            reason, template=self.name, line=line, column=column, context=node.src
        )

    def guard(self, node: Expr | Command, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Fail as exc:
            raise self.fail(node, str(exc)) from None

    def write(self, text: str) -> None:
        self.out.append(text)
        self.size += len(text)
        if self.size > MAX_OUTPUT:
            raise TemplateRenderError(
                f"output longer than {MAX_OUTPUT} characters", template=self.name
            )

    def tick(self, where: Pipe) -> None:
        """Count one step of work, so that a hostile template ends with an error."""
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise self.fail(where, f"more than {MAX_STEPS} actions and loop iterations")

    def walk(self, nodes: Sequence[Node], dot: Any) -> None:
        for node in nodes:
            if isinstance(node, Text):
                self.write(node.text)
                continue
            self.tick(node.pipe)
            if isinstance(node, Action):
                value = self.pipe(dot, node.pipe)
                if not node.pipe.decl:
                    start = self.size
                    self.write(self.guard(node.pipe, to_text, value))
                    if self.track:
                        self.spans.append((start, self.size, node))
            else:
                self.control(node, dot)

    def control(self, node: Control, dot: Any) -> None:
        mark = len(self.vars)
        try:
            value = self.pipe(dot, node.pipe)
            if node.kind == "range":
                self.range(node, value, dot)
            elif self.guard(node.pipe, truth, value):
                self.walk(node.body, value if node.kind == "with" else dot)
            elif node.else_body is not None:
                self.walk(node.else_body, dot)
        finally:
            del self.vars[mark:]

    def range(self, node: Control, value: Any, dot: Any) -> None:
        if value is None:  # Go: ranging over nil runs {{else}}
            items: list[tuple[Any, Any]] = []
        elif isinstance(value, list | tuple):
            items = list(enumerate(value))
        elif isinstance(value, Mapping):
            items = [(key, value[key]) for key in sorted_keys(value)]
        else:
            raise self.fail(node.pipe, f"range can't iterate over {go_type(value)} value")
        if not items and node.else_body is not None:
            self.walk(node.else_body, dot)
        decl = node.pipe.decl
        mark = len(self.vars)
        for key, elem in items:
            self.tick(node.pipe)
            if len(decl) == 2:
                self.set_var(decl[0], key, node.pipe)
            if decl:
                self.set_var(decl[-1], elem, node.pipe)
            self.walk(node.body, elem)
            del self.vars[mark:]

    def set_var(self, name: str, value: Any, node: Pipe) -> None:
        for var in reversed(self.vars):
            if var[0] == name:
                var[1] = value
                return
        raise self.fail(node, f'undefined variable "{name}"')

    def pipe(self, dot: Any, pipe: Pipe) -> Any:
        value: Any = _NONE
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value)
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(name, value, pipe)
            else:
                self.vars.append([name, value])
        return value

    def command(self, dot: Any, cmd: Command, final: Any) -> Any:
        head = cmd.args[0]
        if isinstance(head, Func):
            return self.call(dot, head, cmd.args[1:], final, cmd)
        return self.arg(dot, head)  # the parser allows no arguments and no piped value here

    def call(
        self, dot: Any, func: Func, args: Sequence[Expr], final: Any, where: Command | Func
    ) -> Any:
        thunks: list[Callable[[], Any]] = [functools.partial(self.arg, dot, a) for a in args]
        if final is not _NONE:
            thunks.append(lambda: final)
        if func.name in ("and", "or"):
            value = None
            for thunk in thunks:  # stop at the first value that decides
                value = thunk()
                if self.guard(where, truth, value) == (func.name == "or"):
                    break
            return value
        values = [thunk() for thunk in thunks]
        try:
            return FUNCS[func.name][0](*values)
        except Fail as exc:
            raise self.fail(where, f"error calling {func.name}: {exc}") from None

    def arg(self, dot: Any, node: Expr) -> Any:
        if isinstance(node, Dot):
            return dot
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Field):
            return self.fields(node, dot, node.names)
        if isinstance(node, Variable):
            for name, value in reversed(self.vars):
                if name == node.name:
                    return self.fields(node, value, node.names)
            raise self.fail(node, f'undefined variable "{node.name}"')
        if isinstance(node, Func):
            return self.call(dot, node, (), _NONE, node)
        if isinstance(node, Chain):
            return self.fields(node, self.pipe(dot, node.pipe), node.names)
        return self.pipe(dot, node)

    def fields(self, node: Expr, value: Any, names: Sequence[str]) -> Any:
        for name in names:
            if isinstance(value, Mapping):
                if name not in value:
                    raise self.fail(node, f'map has no entry for key "{name}"')
                value = value[name]
            elif value is None:
                raise self.fail(node, f"nil pointer evaluating interface {{}}.{name}")
            else:
                raise self.fail(node, f"can't evaluate field {name} in type {go_type(value)}")
        return value
