"""The parse tree: what the parser builds and the executor walks.

Every expression node keeps its position in the template text (for error locations)
and its source text (for Go's `executing "name" at <.X>` context).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Dot:
    pos: int
    src: str


@dataclass(frozen=True, slots=True)
class Literal:
    pos: int
    src: str
    value: Any  # str, int, float, bool or None (nil)


@dataclass(frozen=True, slots=True)
class Field:
    pos: int
    src: str
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Variable:
    pos: int
    src: str
    name: str
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Func:
    pos: int
    src: str
    name: str


@dataclass(frozen=True, slots=True)
class Command:
    pos: int
    src: str
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Pipe:
    pos: int
    src: str
    decl: tuple[str, ...]
    is_assign: bool
    cmds: tuple[Command, ...]


@dataclass(frozen=True, slots=True)
class Chain:  # (pipeline).Field.Field
    pos: int
    src: str
    pipe: Pipe
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Action:
    pipe: Pipe


@dataclass(frozen=True, slots=True)
class Control:
    kind: str  # if, range, with
    pipe: Pipe
    body: tuple[Node, ...]
    else_body: tuple[Node, ...] | None


Expr = Dot | Literal | Field | Variable | Func | Pipe | Chain
Node = Text | Action | Control
