"""A strict renderer for the subset of Go's text/template that sidecar templates use.

Chaos Mesh renders its sidecar template ConfigMaps with Go's template package, so a
user's existing template must render here as it did there. This module is the usual
three small parts: a lexer (text into tokens), a parser (tokens into a tree) and an
evaluator (tree and arguments into text).

Supported: ``{{.Field}}``, ``{{.A.B}}`` on maps, ``{{.}}``, ``$``, ``$x``, trim markers
``{{-`` and ``-}}``, comments ``{{/* ... */}}``, ``if``/``else if``/``else``,
``range`` over lists and maps (``{{range $i, $v := .X}}``, ``{{else}}``),
``with``/``else with``/``else``, ``$x := v`` and ``$x = v``, pipelines ``a | f b``,
parenthesised pipelines with field chains ``(index .L 0).Name``, string (``"..."``,
```...```), number and boolean literals, and the functions ``and or not eq ne lt le gt
ge len index print printf println`` (Go's) plus ``quote`` and ``default`` (sprig's).

It is stricter than Go, on purpose, because its output becomes a pod spec:

* a missing key is an error naming template, line and column (Go's
  ``missingkey=error``); so is printing a nil value, where Go prints ``<no value>``,
  and ``index`` of a missing map key, where Go returns nil;
* ``printf`` with a verb that does not fit its argument, or too few or too many
  arguments, is an error; Go writes ``%!d(string=x)`` into the output;
* mistakes Go finds only while executing (wrong argument counts, arguments given to
  something that is not a function, assigning an undeclared variable) are found by
  ``Template.parse``, so a bad template is refused before any pod depends on it.

Not supported: ``define``/``template``/``block``, ``break``/``continue``, character
constants (``'a'``), complex numbers, methods, ``range`` over an integer, and the
functions ``html js urlquery slice call``. Lines and columns are 1-based, columns in
characters (Go counts columns from 0, in bytes).

``Template.render_yaml`` and ``check_yaml_safe_arguments`` add what a text template
cannot know: that an argument must not change the YAML structure it is pasted into.
"""

from __future__ import annotations

import enum
import functools
import math
import operator
import re
import string
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

import yaml

from .yamlfast import SafeLoader

__all__ = [
    "ArgumentError",
    "Template",
    "TemplateError",
    "TemplateRenderError",
    "TemplateSyntaxError",
    "check_yaml_safe_arguments",
]

# Go's isSpace: what trim markers remove, and what separates words in an action.
_SPACES = " \t\r\n"
# Deep nesting is refused rather than left to hit Python's recursion limit.
_MAX_DEPTH = 100
_MAX_WIDTH = 10_000


# --------------------------------------------------------------------------- errors


class TemplateError(ValueError):
    """Base of every error raised here; ``str()`` reads like Go's template errors."""

    def __init__(
        self,
        reason: str,
        *,
        template: str,
        line: int | None = None,
        column: int | None = None,
        context: str | None = None,
    ) -> None:
        self.reason = reason
        self.template = template
        self.line = line
        self.column = column
        self.context = context
        where = template if line is None else f"{template}:{line}:{column}"
        at = f'executing "{template}" at <{context}>: ' if context is not None else ""
        super().__init__(f"template: {where}: {at}{reason}")


class TemplateSyntaxError(TemplateError):
    """The template text is not a valid template."""


class TemplateRenderError(TemplateError):
    """The template could not be rendered with these arguments."""


class ArgumentError(TemplateRenderError):
    """An argument could change the YAML structure of the rendered template."""

    def __init__(self, reason: str, *, template: str, argument: str | None = None, **kw: Any):
        self.argument = argument
        super().__init__(
            reason if argument is None else f"argument {argument}: {reason}",
            template=template,
            **kw,
        )


class _Fail(Exception):
    """Raised by value helpers; the evaluator adds the template location."""


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, pos) + 1
    return text.count("\n", 0, pos) + 1, pos - line_start + 1


# ---------------------------------------------------------------------------- lexer


class _K(enum.Enum):
    TEXT = enum.auto()
    LEFT = enum.auto()  # {{
    RIGHT = enum.auto()  # }}
    SPACE = enum.auto()  # significant: `.A .B` is two operands, `.A.B` one
    PIPE = enum.auto()
    LPAREN = enum.auto()
    RPAREN = enum.auto()
    DECLARE = enum.auto()  # :=
    ASSIGN = enum.auto()  # =
    COMMA = enum.auto()
    FIELD = enum.auto()  # .Name (value without the dot)
    DOT = enum.auto()
    VARIABLE = enum.auto()  # $ or $name
    IDENT = enum.auto()  # a function name
    KEYWORD = enum.auto()
    STRING = enum.auto()  # value already unquoted
    NUMBER = enum.auto()
    BOOL = enum.auto()
    NIL = enum.auto()
    EOF = enum.auto()


class _Token(NamedTuple):
    kind: _K
    value: Any
    pos: int
    end: int


_KEYWORDS = {
    "if",
    "else",
    "end",
    "range",
    "with",
    "define",
    "template",
    "block",
    "break",
    "continue",
}
_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
}
# Digits, letters, `_` and `.`, and a sign only right after an exponent letter: anything
# Go's scanNumber could accept; what does not convert below is "bad number syntax".
_NUMBER = re.compile(r"[+-]?[0-9.][0-9A-Za-z_.]*(?:(?<=[eEpP])[+-][0-9A-Za-z_.]*)*")


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or c.isdecimal()


def _go_rune(c: str) -> str:
    return f"U+{ord(c):04X} {c!r}"


class _Lexer:
    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name
        self.tokens: list[_Token] = []

    def error(self, pos: int, reason: str) -> TemplateSyntaxError:
        line, column = _line_col(self.text, pos)
        return TemplateSyntaxError(reason, template=self.name, line=line, column=column)

    def emit(self, kind: _K, value: Any, pos: int, end: int) -> None:
        self.tokens.append(_Token(kind, value, pos, end))

    def run(self) -> list[_Token]:
        text, pos, trim_next = self.text, 0, False
        while True:
            start = text.find("{{", pos)
            stop = len(text) if start < 0 else start
            # Go's trim markers need the space: `{{-3}}` is the number -3.
            left_trim = (
                start >= 0
                and text[start + 2 : start + 3] == "-"
                and (text[start + 3 : start + 4] in tuple(_SPACES))
            )
            chunk = text[pos:stop]
            if trim_next:
                chunk = chunk.lstrip(_SPACES)
            if left_trim:
                chunk = chunk.rstrip(_SPACES)
            if chunk:
                self.emit(_K.TEXT, chunk, pos, stop)
            if start < 0:
                break
            inner = start + (4 if left_trim else 2)
            if text.startswith("/*", inner):
                pos, trim_next = self.comment(start, inner)
            else:
                self.emit(_K.LEFT, None, start, start + 2)
                pos, trim_next = self.action(start, inner)
        self.emit(_K.EOF, None, len(text), len(text))
        return self.tokens

    def right_delim(self, pos: int) -> tuple[int, bool] | None:
        """(end, trims) if a closing delimiter starts at pos: `}}` or ` -}}`."""
        if self.text.startswith("}}", pos):
            return pos + 2, False
        if self.text[pos : pos + 1] in tuple(_SPACES) and self.text.startswith("-}}", pos + 1):
            return pos + 4, True
        return None

    def comment(self, start: int, inner: int) -> tuple[int, bool]:
        # Like Go, a comment must fill its action: `{{/*` ... `*/}}`, trim markers aside.
        close = self.text.find("*/", inner + 2)
        if close < 0:
            raise self.error(start, "unclosed comment")
        delim = self.right_delim(close + 2)
        if delim is None:
            raise self.error(close, "comment ends before closing delimiter")
        return delim

    def action(self, start: int, pos: int) -> tuple[int, bool]:
        text, n = self.text, len(self.text)
        simple = {"|": _K.PIPE, "(": _K.LPAREN, ")": _K.RPAREN, ",": _K.COMMA, "=": _K.ASSIGN}
        while True:
            delim = self.right_delim(pos)
            if delim is not None:
                self.emit(_K.RIGHT, None, pos, delim[0])
                return delim
            if pos >= n:
                raise self.error(start, "unclosed action")
            c = text[pos]
            if c in _SPACES:
                end = pos
                while end < n and text[end] in _SPACES:
                    end += 1
                if text.startswith("-}}", end):
                    end -= 1  # the last space belongs to the ` -}}` trim marker
                if end > pos:
                    self.emit(_K.SPACE, None, pos, end)
                pos = end
            elif c in simple:
                self.emit(simple[c], c, pos, pos + 1)
                pos += 1
            elif c == ":":
                if not text.startswith(":=", pos):
                    raise self.error(pos, "expected :=")
                self.emit(_K.DECLARE, ":=", pos, pos + 2)
                pos += 2
            elif c == '"':
                pos = self.quoted(pos)
            elif c == "`":
                end = text.find("`", pos + 1)
                if end < 0:
                    raise self.error(pos, "unterminated raw quoted string")
                # Go's strconv.Unquote drops carriage returns from raw strings.
                self.emit(_K.STRING, text[pos + 1 : end].replace("\r", ""), pos, end + 1)
                pos = end + 1
            elif c == "$":
                pos = self.word(pos, _K.VARIABLE)
            elif c == "." and not "0" <= text[pos + 1 : pos + 2] <= "9":
                pos = self.word(pos, _K.FIELD)
            elif c in "+-." or "0" <= c <= "9":
                pos = self.number(pos)
            elif c == "_" or c.isalpha():
                pos = self.word(pos, _K.IDENT)
            else:
                raise self.error(pos, f"unrecognized character in action: {_go_rune(c)}")

    def at_terminator(self, pos: int) -> bool:
        return (
            pos >= len(self.text)
            or self.text[pos] in _SPACES + ".,|:()"
            or (self.right_delim(pos) is not None)
        )

    def word(self, pos: int, kind: _K) -> int:
        end = pos if kind is _K.IDENT else pos + 1  # skip the `$` or `.`
        while end < len(self.text) and _is_alnum(self.text[end]):
            end += 1
        if not self.at_terminator(end):
            raise self.error(end, f"bad character {_go_rune(self.text[end])}")
        word = self.text[pos:end]
        value: Any
        if kind is _K.FIELD:
            kind, value = (_K.DOT, None) if word == "." else (_K.FIELD, word[1:])
        elif kind is _K.VARIABLE:
            value = word
        elif word in _KEYWORDS:
            kind, value = _K.KEYWORD, word
        elif word in ("true", "false"):
            kind, value = _K.BOOL, word == "true"
        elif word == "nil":
            kind, value = _K.NIL, None
        else:
            value = word
        self.emit(kind, value, pos, end)
        return end

    def number(self, pos: int) -> int:
        match = _NUMBER.match(self.text, pos)
        raw = match.group() if match else self.text[pos]
        value = _parse_number(raw)
        if value is None:
            raise self.error(pos, f"bad number syntax: {raw!r}")
        self.emit(_K.NUMBER, value, pos, pos + len(raw))
        return pos + len(raw)

    def quoted(self, pos: int) -> int:
        text, i = self.text, pos + 1
        while True:
            if i >= len(text) or text[i] == "\n":
                raise self.error(pos, "unterminated quoted string")
            if text[i] == "\\":
                if i + 1 >= len(text) or text[i + 1] == "\n":
                    raise self.error(pos, "unterminated quoted string")
                i += 2
            elif text[i] == '"':
                break
            else:
                i += 1
        try:
            value = _unquote(text[pos + 1 : i])
        except ValueError as exc:
            raise self.error(pos, str(exc)) from None
        self.emit(_K.STRING, value, pos, i + 1)
        return i + 1


def _parse_number(raw: str) -> int | float | None:
    """Go's number literals: ints (0x, 0o, 0b, leading-0 octal, `_`) and floats."""
    body = raw.lstrip("+-").lower()
    try:
        if re.fullmatch(r"0[0-7]+", body):
            value: int | float = int(raw, 8)
        elif body[:2] in ("0x", "0o", "0b") or not re.search(r"[.ep]", body):
            value = int(raw, 0)
        else:
            value = float(raw)
    except ValueError:
        return None
    if isinstance(value, float) and math.isinf(value):
        return None  # Go: value out of range
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return None  # Go: overflows int
    return value


def _unquote(raw: str) -> str:
    """Go's strconv.Unquote for the inside of "...": \\x and octal escapes are bytes."""
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c != "\\":
            out += c.encode("utf-8", "surrogatepass")
            i += 1
            continue
        e = raw[i + 1]
        if e in _ESCAPES:
            out += _ESCAPES[e].encode()
            i += 2
        elif e == "x" and _all_in(raw[i + 2 : i + 4], string.hexdigits, 2):
            out.append(int(raw[i + 2 : i + 4], 16))
            i += 4
        elif e in "01234567" and _all_in(raw[i + 1 : i + 4], "01234567", 3):
            if int(raw[i + 1 : i + 4], 8) > 255:
                raise ValueError(f"octal escape value > 255: \\{raw[i + 1 : i + 4]}")
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        elif e in "uU" and _all_in(
            raw[i + 2 : i + (6 if e == "u" else 10)], string.hexdigits, 4 if e == "u" else 8
        ):
            size = 4 if e == "u" else 8
            code = int(raw[i + 2 : i + 2 + size], 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise ValueError(f"escape sequence is invalid Unicode code point: {code:#x}")
            out += chr(code).encode()
            i += 2 + size
        else:
            raise ValueError(f"invalid escape sequence in quoted string: \\{e}")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("quoted string is not valid UTF-8") from None


def _all_in(s: str, alphabet: str, size: int) -> bool:
    return len(s) == size and all(c in alphabet for c in s)


# ------------------------------------------------------------------------ the tree


@dataclass(frozen=True, slots=True)
class _Text:
    text: str


@dataclass(frozen=True, slots=True)
class _Dot:
    pos: int
    src: str


@dataclass(frozen=True, slots=True)
class _Literal:
    pos: int
    src: str
    value: Any  # str, int, float, bool or None (nil)


@dataclass(frozen=True, slots=True)
class _Field:
    pos: int
    src: str
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Variable:
    pos: int
    src: str
    name: str
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Func:
    pos: int
    src: str
    name: str


@dataclass(frozen=True, slots=True)
class _Command:
    pos: int
    src: str
    args: tuple[_Expr, ...]


@dataclass(frozen=True, slots=True)
class _Pipe:
    pos: int
    src: str
    decl: tuple[str, ...]
    is_assign: bool
    cmds: tuple[_Command, ...]


@dataclass(frozen=True, slots=True)
class _Chain:  # (pipeline).Field.Field
    pos: int
    src: str
    pipe: _Pipe
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Action:
    pipe: _Pipe


@dataclass(frozen=True, slots=True)
class _Control:
    kind: str  # if, range, with
    pipe: _Pipe
    body: tuple[_Node, ...]
    else_body: tuple[_Node, ...] | None


_Expr = _Dot | _Literal | _Field | _Variable | _Func | _Pipe | _Chain
_Node = _Text | _Action | _Control

# --------------------------------------------------------------------------- parser

_OPERAND_START = {
    _K.BOOL,
    _K.DOT,
    _K.FIELD,
    _K.IDENT,
    _K.NUMBER,
    _K.NIL,
    _K.STRING,
    _K.VARIABLE,
    _K.LPAREN,
}


class _Parser:
    def __init__(self, tokens: list[_Token], text: str, name: str) -> None:
        self.tokens = tokens
        self.text = text
        self.name = name
        self.i = 0
        self.vars = ["$"]  # variables in scope, as Go's parser tracks them
        self.depth = 0

    def error(self, pos: int, reason: str) -> TemplateSyntaxError:
        line, column = _line_col(self.text, pos)
        return TemplateSyntaxError(reason, template=self.name, line=line, column=column)

    def describe(self, tok: _Token) -> str:
        if tok.kind is _K.EOF:
            return "EOF"
        if tok.kind is _K.KEYWORD:
            return f"<{tok.value}>"
        return repr(self.text[tok.pos : tok.end])

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def next(self) -> _Token:
        self.i += 1
        return self.tokens[self.i - 1]

    def peek_ns(self) -> _Token:
        while self.tokens[self.i].kind is _K.SPACE:
            self.i += 1
        return self.tokens[self.i]

    def next_ns(self) -> _Token:
        self.peek_ns()
        return self.next()

    def expect_right(self, context: str) -> None:
        tok = self.next_ns()
        if tok.kind is not _K.RIGHT:
            raise self.error(tok.pos, f"unexpected {self.describe(tok)} in {context}")

    def nest(self, tok: _Token) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.error(tok.pos, f"nested more than {_MAX_DEPTH} levels deep")

    def parse(self) -> tuple[_Node, ...]:
        nodes, stop = self.parse_list()
        if stop is not None:
            raise self.error(stop.pos, f"unexpected {{{{{stop.value}}}}}")
        return nodes

    def parse_list(self) -> tuple[tuple[_Node, ...], _Token | None]:
        """Nodes up to EOF (None) or to an `else`/`end` keyword (returned, consumed)."""
        nodes: list[_Node] = []
        while True:
            tok = self.next()
            if tok.kind is _K.EOF:
                self.i -= 1
                return tuple(nodes), None
            if tok.kind is _K.TEXT:
                nodes.append(_Text(tok.value))
                continue
            kw = self.peek_ns()  # tok is `{{`
            if kw.kind is not _K.KEYWORD:
                nodes.append(_Action(self.parse_pipeline("command", _K.RIGHT)))
                continue
            self.next()
            if kw.value in ("end", "else"):
                return tuple(nodes), kw
            if kw.value not in ("if", "range", "with"):
                raise self.error(kw.pos, f"{{{{{kw.value}}}}} is not supported")
            nodes.append(self.parse_control(kw))

    def parse_control(self, kw: _Token) -> _Control:
        kind = kw.value
        self.nest(kw)
        mark = len(self.vars)  # variables declared in here end at its {{end}}
        try:
            pipe = self.parse_pipeline(kind, _K.RIGHT)
            body, stop = self.parse_list()
            else_body = None
            if stop is not None and stop.value == "else":
                nxt = self.peek_ns()
                if kind != "range" and nxt.kind is _K.KEYWORD and nxt.value == kind:
                    # `{{else if}}` is `{{else}}{{if}}` whose {{end}} closes both.
                    self.next()
                    return _Control(kind, pipe, body, (self.parse_control(nxt),))
                self.expect_right("else")
                else_body, stop = self.parse_list()
                if stop is not None and stop.value != "end":
                    raise self.error(stop.pos, "expected {{end}}; found {{else}}")
            if stop is None:
                raise self.error(kw.pos, f"unexpected EOF: {{{{{kind}}}}} has no {{{{end}}}}")
            self.expect_right("end")
            return _Control(kind, pipe, body, else_body)
        finally:
            del self.vars[mark:]
            self.depth -= 1

    def parse_decl(self, context: str) -> tuple[list[_Token], bool]:
        """`$x :=`, `$x =` or (range only) `$i, $v :=` at the start of a pipeline."""
        save = self.i
        if self.peek_ns().kind is not _K.VARIABLE:
            return [], False
        names = [self.next()]
        sep = self.peek_ns()
        if sep.kind is _K.COMMA:
            if context != "range":
                raise self.error(sep.pos, f"too many declarations in {context}")
            self.next()
            second = self.next_ns()
            if second.kind is not _K.VARIABLE:
                raise self.error(second.pos, "range can only initialize variables")
            names.append(second)
            sep = self.peek_ns()
            if sep.kind not in (_K.DECLARE, _K.ASSIGN):
                raise self.error(
                    sep.pos, f"expected := or = in {context}, not {self.describe(sep)}"
                )
        elif sep.kind not in (_K.DECLARE, _K.ASSIGN):
            self.i = save
            return [], False
        self.next()
        if sep.kind is _K.ASSIGN:
            for var in names:
                if var.value not in self.vars:
                    raise self.error(var.pos, f'undefined variable "{var.value}"')
        return names, sep.kind is _K.ASSIGN

    def parse_pipeline(self, context: str, end: _K) -> _Pipe:
        start = self.peek_ns()
        decl, is_assign = self.parse_decl(context)
        cmds: list[_Command] = []
        after_pipe = False
        while True:
            tok = self.peek_ns()
            if tok.kind in (_K.RIGHT, _K.RPAREN):
                if tok.kind is not end:
                    reason = "unclosed left paren" if end is _K.RPAREN else "unexpected right paren"
                    raise self.error(tok.pos, reason)
                if after_pipe:
                    raise self.error(tok.pos, "missing command after |")
                self.next()
                break
            if tok.kind not in _OPERAND_START:
                raise self.error(tok.pos, f"unexpected {self.describe(tok)} in {context}")
            cmd, after_pipe = self.parse_command()
            cmds.append(cmd)
        if not cmds:
            raise self.error(start.pos, f"missing value for {context}")
        for stage, cmd in enumerate(cmds, 1):
            self.check_command(cmd, stage)
        if not is_assign:
            self.vars.extend(var.value for var in decl)
        src = self.text[start.pos : tok.pos].strip()
        return _Pipe(start.pos, src, tuple(v.value for v in decl), is_assign, tuple(cmds))

    def check_command(self, cmd: _Command, stage: int) -> None:
        """What Go checks while executing, checked once here."""
        head = cmd.args[0]
        if isinstance(head, _Func):
            self.check_arity(head, len(cmd.args) - 1 + (stage > 1))
        elif stage > 1:
            raise self.error(head.pos, f"non executable command in pipeline stage {stage}")
        elif len(cmd.args) > 1:
            raise self.error(cmd.args[1].pos, f"can't give argument to non-function {head.src}")
        elif isinstance(head, _Literal) and head.value is None:
            raise self.error(head.pos, "nil is not a command")
        for arg in cmd.args[1:]:
            if isinstance(arg, _Func):  # a function as an argument is called without any
                self.check_arity(arg, 0)

    def check_arity(self, func: _Func, count: int) -> None:
        _, low, high = _FUNCS[func.name]
        if count < low or (high is not None and count > high):
            want = f"{low}" if low == high else f"at least {low}"
            raise self.error(
                func.pos, f"wrong number of args for {func.name}: want {want} got {count}"
            )

    def parse_command(self) -> tuple[_Command, bool]:
        """Operands up to `|` (consumed; True) or `}}`/`)` (not consumed; False)."""
        args: list[_Expr] = []
        while True:
            tok = self.peek_ns()
            if args and tok.kind in (_K.PIPE, _K.RIGHT, _K.RPAREN):
                piped = tok.kind is _K.PIPE
                if piped:
                    self.next()
                break
            operand = self.parse_operand()
            if operand is None:
                raise self.error(tok.pos, f"unexpected {self.describe(tok)} in operand")
            args.append(operand)
            after = self.peek()
            if after.kind not in (_K.SPACE, _K.PIPE, _K.RIGHT, _K.RPAREN):
                raise self.error(after.pos, f"unexpected {self.describe(after)} in operand")
        src = self.text[args[0].pos : tok.pos].strip()
        return _Command(args[0].pos, src, tuple(args)), piped

    def parse_operand(self) -> _Expr | None:
        term = self.parse_term()
        if term is None or self.peek().kind is not _K.FIELD:
            return term
        names: list[str] = []
        while self.peek().kind is _K.FIELD:  # no space between: a chain
            names.append(self.next().value)
        src = self.text[term.pos : self.tokens[self.i - 1].end]
        if isinstance(term, _Field):
            return _Field(term.pos, src, term.names + tuple(names))
        if isinstance(term, _Variable):
            return _Variable(term.pos, src, term.name, term.names + tuple(names))
        if isinstance(term, _Pipe):
            return _Chain(term.pos, src, term, tuple(names))
        raise self.error(term.pos, f"unexpected . after term {term.src!r}")

    def parse_term(self) -> _Expr | None:
        tok = self.peek_ns()
        src = self.text[tok.pos : tok.end]
        kind = tok.kind
        if kind is _K.LPAREN:
            self.next()
            self.nest(tok)
            pipe = self.parse_pipeline("parenthesized pipeline", _K.RPAREN)
            self.depth -= 1
            closing = self.tokens[self.i - 1]
            return _Pipe(
                tok.pos, self.text[tok.pos : closing.end], pipe.decl, pipe.is_assign, pipe.cmds
            )
        if kind not in _OPERAND_START:
            return None
        self.next()
        if kind is _K.IDENT:
            if tok.value not in _FUNCS:
                raise self.error(tok.pos, f'function "{tok.value}" not defined')
            return _Func(tok.pos, src, tok.value)
        if kind is _K.VARIABLE:
            if tok.value not in self.vars:
                raise self.error(tok.pos, f'undefined variable "{tok.value}"')
            return _Variable(tok.pos, src, tok.value, ())
        if kind is _K.FIELD:
            return _Field(tok.pos, src, (tok.value,))
        if kind is _K.DOT:
            return _Dot(tok.pos, src)
        return _Literal(tok.pos, src, tok.value)  # string, number, bool, nil


# ------------------------------------------------------------------ values as Go sees them


def _go_type(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, Mapping):
        return "map[string]interface {}"
    if isinstance(v, list | tuple):
        return "[]interface {}"
    names = {bool: "bool", int: "int", float: "float64", str: "string"}
    return names.get(type(v), type(v).__name__)


def _truth(v: Any) -> bool:
    """Go's truth: false, 0, nil and empty strings, lists and maps are false."""
    if v is None:
        return False
    if isinstance(v, bool | int | float):
        return v != 0
    if isinstance(v, str | list | tuple | Mapping):
        return len(v) > 0
    raise _Fail(f"unsupported value of type {type(v).__name__}")


def _sorted_keys(m: Mapping[Any, Any]) -> list[Any]:
    try:
        return sorted(m)
    except TypeError:  # mixed key types: any stable order will do
        return sorted(m, key=lambda k: (type(k).__name__, repr(k)))


def _to_text(v: Any, depth: int = 0) -> str:
    """Go's %v for the values YAML arguments can hold; nil is refused, not `<no value>`."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float(v)
    if v is None:
        raise _Fail("refusing to print a nil value (Go would print <no value>)")
    if depth >= _MAX_DEPTH:
        raise _Fail("value nested too deeply")
    if isinstance(v, list | tuple):
        return "[" + " ".join(_to_text(x, depth + 1) for x in v) + "]"
    if isinstance(v, Mapping):
        items = (f"{_to_text(k, depth + 1)}:{_to_text(v[k], depth + 1)}" for k in _sorted_keys(v))
        return "map[" + " ".join(items) + "]"
    raise _Fail(f"cannot print a value of type {type(v).__name__}")


def _go_float(f: float) -> str:
    """strconv.FormatFloat(f, 'g', -1, 64): shortest digits, exponent from 1e+06 and 1e-05."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(f)).as_tuple()
    assert isinstance(exponent, int)
    point = len(digit_tuple) + exponent  # value is 0.DIGITS * 10**point
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    out = "-" if sign else ""
    if not -4 <= point - 1 < 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{out}{mantissa}e{point - 1:+03d}"
    if point <= 0:
        return f"{out}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return out + digits + "0" * (point - len(digits))
    return f"{out}{digits[:point]}.{digits[point:]}"


_QUOTE_ESCAPES = {v: "\\" + k for k, v in _ESCAPES.items() if k not in '\\"'}


def _go_quote(s: str) -> str:
    """strconv.Quote: also a valid YAML double-quoted scalar with the same content."""
    out = ['"']
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif c.isprintable():  # Python's and Go's IsPrint agree: L, M, N, P, S and ' '
            out.append(c)
        elif c in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[c])
        elif ord(c) < 0x80:
            out.append(f"\\x{ord(c):02x}")
        elif 0xD800 <= ord(c) <= 0xDFFF:
            out.append("\\ufffd")
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    out.append('"')
    return "".join(out)


def _kind(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return "other"


# ------------------------------------------------------------------------ functions


def _eq(a: Any, *others: Any) -> bool:
    for b in others:
        if _kind(a) != _kind(b):
            if a is not None and b is not None:
                raise _Fail(f"incompatible types for comparison: {_go_type(a)} and {_go_type(b)}")
        elif _kind(a) == "other":
            raise _Fail(f"non-comparable type {_go_type(a)}")
        elif a == b:
            return True
    return False


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        for v in (a, b):
            if _kind(v) not in ("int", "float", "string"):
                raise _Fail(f"invalid type for comparison: {_go_type(v)}")
        if _kind(a) != _kind(b):
            raise _Fail(f"incompatible types for comparison: {_go_type(a)} and {_go_type(b)}")
        return op(a, b)

    return compare


def _len(v: Any) -> int:
    if isinstance(v, str):
        return len(v.encode("utf-8", "surrogatepass"))  # Go counts bytes
    if isinstance(v, list | tuple | Mapping):
        return len(v)
    raise _Fail(f"len of type {_go_type(v)}")


def _index(item: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(item, Mapping):
            if not isinstance(key, str | int | float | bool) or key not in item:
                raise _Fail(f"map has no entry for key {_to_text(key)}")
            item = item[key]
        elif isinstance(item, list | tuple):
            if _kind(key) != "int":
                raise _Fail(f"cannot index slice with type {_go_type(key)}")
            if not 0 <= key < len(item):
                raise _Fail(f"index out of range: {key}")
            item = item[key]
        else:
            raise _Fail(f"can't index item of type {_go_type(item)}")
    return item


def _print(*args: Any) -> str:
    """fmt.Sprint: a space between operands when neither is a string."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(_to_text(arg))
    return "".join(out)


def _println(*args: Any) -> str:
    return " ".join(_to_text(a) for a in args) + "\n"


def _quote(*args: Any) -> str:
    """sprig's quote: each non-nil argument as Go's %q of its %v, joined by spaces."""
    return " ".join(_go_quote(_to_text(a)) for a in args if a is not None)


def _default(fallback: Any, *given: Any) -> Any:
    """sprig's default: the fallback when the value is missing from the call or empty."""
    return given[0] if given and _truth(given[0]) else fallback


_VERB = re.compile(r"%([-+# 0]*)([0-9]*)(?:\.([0-9]*))?(.?)", re.DOTALL)


def _printf(fmt: Any, *args: Any) -> str:
    if not isinstance(fmt, str):
        raise _Fail(f"printf format must be a string, not {_go_type(fmt)}")
    out: list[str] = []
    pos = used = 0
    while (start := fmt.find("%", pos)) >= 0:
        out.append(fmt[pos:start])
        match = _VERB.match(fmt, start)
        assert match is not None  # every group is optional
        flags, width, precision, verb = match.groups()
        pos = match.end()
        if verb == "%":
            out.append("%")
            continue
        if not verb:
            raise _Fail("format ends with a bare %")
        if used >= len(args):
            raise _Fail(f"missing argument for %{verb}")
        spec = _Spec(flags, int(width or 0), None if precision is None else int(precision or 0))
        if spec.width > _MAX_WIDTH or (spec.precision or 0) > _MAX_WIDTH:
            raise _Fail("width or precision too large")
        out.append(spec.format(verb, args[used]))
        used += 1
    out.append(fmt[pos:])
    if used < len(args):
        raise _Fail(f"{len(args) - used} argument(s) left over")
    return "".join(out)


@dataclass(frozen=True)
class _Spec:
    """One printf verb's flags, width and precision, formatted the way Go's fmt does."""

    flags: str
    width: int
    precision: int | None

    def format(self, verb: str, v: Any) -> str:
        kind = _kind(v)
        if "#" in self.flags and verb not in "xXb":
            raise _Fail(f"flag # with %{verb} is not supported")
        if verb == "v" and kind in ("int", "float"):
            verb = "d" if kind == "int" else "g"
        if verb in "sv" or (verb in "xX" and kind == "string"):
            if kind == "nil":
                raise _Fail(f"refusing to format nil with %{verb}")
            if verb == "s" and kind != "string":
                raise _Fail(f"%s needs a string, got {_go_type(v)}")
            text = _to_text(v)[: self.precision]
            if verb in "xX":
                text = text.encode("utf-8", "surrogatepass").hex()
                text = text.upper() if verb == "X" else text
            return self.pad(text, zero_ok=True)
        if verb == "q" and kind == "string":
            return self.pad(_go_quote(v[: self.precision]), zero_ok=True)
        if verb == "t" and kind == "bool":
            return self.pad("true" if v else "false", zero_ok=True)
        if verb in "dxXob" and kind == "int":
            body = format(abs(v), {"d": "d", "x": "x", "X": "X", "o": "o", "b": "b"}[verb])
            if self.precision is not None:
                body = body.rjust(self.precision, "0")
            prefix = {"x": "0x", "X": "0X", "b": "0b"}.get(verb, "") if "#" in self.flags else ""
            return self.number(v < 0, prefix + body, zero_ok=self.precision is None)
        if verb in "eEfFgG" and kind == "float":
            if math.isinf(v) or math.isnan(v):
                text = _go_float(v)
                if "+" in self.flags and text == "NaN":
                    text = "+NaN"
                return self.pad(text, zero_ok=False)
            if verb in "gG" and self.precision is None:
                body = _go_float(abs(v))
            else:
                body = format(abs(v), f".{6 if self.precision is None else self.precision}{verb}")
            body = body.upper() if verb in "EG" else body
            return self.number(math.copysign(1, v) < 0, body, zero_ok=True)
        raise _Fail(f"%{verb} cannot format {_go_type(v)} {_to_text(v)!r}")

    def number(self, negative: bool, body: str, *, zero_ok: bool) -> str:
        sign = "-" if negative else "+" if "+" in self.flags else " " if " " in self.flags else ""
        if zero_ok and "0" in self.flags and "-" not in self.flags:
            body = body.rjust(self.width - len(sign), "0")
        return self.pad(sign + body, zero_ok=False)

    def pad(self, text: str, *, zero_ok: bool) -> str:
        if "-" in self.flags:
            return text.ljust(self.width)
        return text.rjust(self.width, "0" if zero_ok and "0" in self.flags else " ")


def _lazy(*args: Any) -> Any:
    raise AssertionError("and/or are evaluated by the evaluator, lazily, as Go does since 1.18")


# name: (function, fewest arguments, most arguments or None for any number)
_FUNCS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "and": (_lazy, 1, None),
    "or": (_lazy, 1, None),
    "not": (lambda v: not _truth(v), 1, 1),
    "eq": (_eq, 2, None),
    "ne": (lambda a, b: not _eq(a, b), 2, 2),
    "lt": (_ordered(operator.lt), 2, 2),
    "le": (_ordered(operator.le), 2, 2),
    "gt": (_ordered(operator.gt), 2, 2),
    "ge": (_ordered(operator.ge), 2, 2),
    "len": (_len, 1, 1),
    "index": (_index, 1, None),
    "print": (_print, 0, None),
    "printf": (_printf, 1, None),
    "println": (_println, 0, None),
    "quote": (_quote, 0, None),
    "default": (_default, 1, None),
}


# ------------------------------------------------------------------------ evaluator

_NONE = object()  # "no piped value", distinct from a piped nil


class _Exec:
    def __init__(self, template: Template, data: Any, track: bool) -> None:
        self.template = template
        self.out: list[str] = []
        self.size = 0
        self.spans: list[tuple[int, int, _Action]] = []
        self.track = track
        self.vars: list[list[Any]] = [["$", data]]  # [name, value], innermost last

    def fail(self, node: _Expr | _Command, reason: str) -> TemplateRenderError:
        line, column = _line_col(self.template.text, node.pos)
        return TemplateRenderError(
            reason, template=self.template.name, line=line, column=column, context=node.src
        )

    def guard(self, node: _Expr | _Command, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except _Fail as exc:
            raise self.fail(node, str(exc)) from None

    def write(self, text: str) -> None:
        self.out.append(text)
        self.size += len(text)

    def walk(self, nodes: Sequence[_Node], dot: Any) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.write(node.text)
            elif isinstance(node, _Action):
                value = self.pipe(dot, node.pipe)
                if not node.pipe.decl:
                    start = self.size
                    self.write(self.guard(node.pipe, _to_text, value))
                    if self.track:
                        self.spans.append((start, self.size, node))
            else:
                self.control(node, dot)

    def control(self, node: _Control, dot: Any) -> None:
        mark = len(self.vars)
        try:
            value = self.pipe(dot, node.pipe)
            if node.kind == "range":
                self.range(node, value, dot)
            elif self.guard(node.pipe, _truth, value):
                self.walk(node.body, value if node.kind == "with" else dot)
            elif node.else_body is not None:
                self.walk(node.else_body, dot)
        finally:
            del self.vars[mark:]

    def range(self, node: _Control, value: Any, dot: Any) -> None:
        if value is None:  # Go: ranging over nil runs {{else}}
            items: list[tuple[Any, Any]] = []
        elif isinstance(value, list | tuple):
            items = list(enumerate(value))
        elif isinstance(value, Mapping):
            items = [(key, value[key]) for key in _sorted_keys(value)]
        else:
            raise self.fail(node.pipe, f"range can't iterate over {_go_type(value)} value")
        if not items and node.else_body is not None:
            self.walk(node.else_body, dot)
        decl = node.pipe.decl
        mark = len(self.vars)
        for key, elem in items:
            if len(decl) == 2:
                self.set_var(decl[0], key, node.pipe)
            if decl:
                self.set_var(decl[-1], elem, node.pipe)
            self.walk(node.body, elem)
            del self.vars[mark:]

    def set_var(self, name: str, value: Any, node: _Pipe) -> None:
        for var in reversed(self.vars):
            if var[0] == name:
                var[1] = value
                return
        raise self.fail(node, f'undefined variable "{name}"')

    def pipe(self, dot: Any, pipe: _Pipe) -> Any:
        value: Any = _NONE
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value)
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(name, value, pipe)
            else:
                self.vars.append([name, value])
        return value

    def command(self, dot: Any, cmd: _Command, final: Any) -> Any:
        head = cmd.args[0]
        if isinstance(head, _Func):
            return self.call(dot, head, cmd.args[1:], final, cmd)
        return self.arg(dot, head)  # the parser allows no arguments and no piped value here

    def call(
        self, dot: Any, func: _Func, args: Sequence[_Expr], final: Any, where: _Command | _Func
    ) -> Any:
        thunks: list[Callable[[], Any]] = [functools.partial(self.arg, dot, a) for a in args]
        if final is not _NONE:
            thunks.append(lambda: final)
        if func.name in ("and", "or"):
            value = None
            for thunk in thunks:  # stop at the first value that decides
                value = thunk()
                if self.guard(where, _truth, value) == (func.name == "or"):
                    break
            return value
        values = [thunk() for thunk in thunks]
        try:
            return _FUNCS[func.name][0](*values)
        except _Fail as exc:
            raise self.fail(where, f"error calling {func.name}: {exc}") from None

    def arg(self, dot: Any, node: _Expr) -> Any:
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Literal):
            return node.value
        if isinstance(node, _Field):
            return self.fields(node, dot, node.names)
        if isinstance(node, _Variable):
            for name, value in reversed(self.vars):
                if name == node.name:
                    return self.fields(node, value, node.names)
            raise self.fail(node, f'undefined variable "{node.name}"')
        if isinstance(node, _Func):
            return self.call(dot, node, (), _NONE, node)
        if isinstance(node, _Chain):
            return self.fields(node, self.pipe(dot, node.pipe), node.names)
        return self.pipe(dot, node)

    def fields(self, node: _Expr, value: Any, names: Sequence[str]) -> Any:
        for name in names:
            if isinstance(value, Mapping):
                if name not in value:
                    raise self.fail(node, f'map has no entry for key "{name}"')
                value = value[name]
            elif value is None:
                raise self.fail(node, f"nil pointer evaluating interface {{}}.{name}")
            else:
                raise self.fail(node, f"can't evaluate field {name} in type {_go_type(value)}")
        return value


# ------------------------------------------------------------------------- template


class Template:
    """A parsed template. Immutable: render it as often as needed, from any thread."""

    __slots__ = ("_nodes", "name", "text")

    def __init__(self, text: str, name: str, nodes: tuple[_Node, ...]) -> None:
        self.text = text
        self.name = name
        self._nodes = nodes

    @classmethod
    def parse(cls, text: str, name: str) -> Template:
        """Parse text; raise TemplateSyntaxError (with name, line, column) if it is bad."""
        tokens = _Lexer(text, name).run()
        return cls(text, name, _Parser(tokens, text, name).parse())

    def render(self, args: Mapping[str, Any]) -> str:
        """Render with args as dot; raise TemplateRenderError on a missing key or the like."""
        return self._execute(args, track=False)[0]

    def render_yaml(self, args: Mapping[str, Any]) -> str:
        """Render for a YAML document, refusing arguments that could change its structure.

        Two checks: check_yaml_safe_arguments() on the values, then, on the result, that
        everything an action printed lies inside one YAML scalar (a key or a value).
        """
        check_yaml_safe_arguments(args, self.name)
        text, spans = self._execute(args, track=True)
        _check_spans_in_scalars(self, text, spans)
        return text

    def _execute(self, data: Any, *, track: bool) -> tuple[str, list[tuple[int, int, _Action]]]:
        state = _Exec(self, data, track)
        try:
            state.walk(self._nodes, data)
        except RecursionError:
            raise TemplateRenderError("arguments nested too deeply", template=self.name) from None
        return "".join(state.out), state.spans

    def __repr__(self) -> str:
        return f"Template(name={self.name!r})"


# ----------------------------------------------------------------------- YAML safety

_LINE_BREAKS = "\n\r\x85\u2028\u2029"  # YAML 1.1, which PyYAML reads, has five
_LEADING = "-?:,[]{}#&*!|>'\"%@`<"  # YAML indicators (and `<<`, the merge key)


def _yaml_hazard(s: str) -> str | None:
    """Why s, pasted into a YAML line, could do more than be one scalar; None if safe."""
    if any(c in _LINE_BREAKS for c in s):
        return "contains a line break"
    for c in s:
        if unicodedata.category(c) in ("Cc", "Cs") or c in "\ufffe\uffff":
            return f"contains the control character {_go_rune(c)}"
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
    return f"{path}[{_go_quote(key) if isinstance(key, str) else repr(key)}]"


def _leaves(value: Any, path: str, depth: int, template: str) -> Iterator[tuple[str, str]]:
    """(path, string) for every string and every string key in an argument value."""
    if depth > _MAX_DEPTH:
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
                    f"value {_go_quote(text)} {hazard}, "
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


def _check_spans_in_scalars(
    template: Template, text: str, spans: list[tuple[int, int, _Action]]
) -> None:
    def location(action: _Action) -> dict[str, Any]:
        line, column = _line_col(template.text, action.pipe.pos)
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
            f"rendered text is not valid YAML: {problem}", template=template.name, **where
        ) from None
    except RecursionError:
        raise TemplateRenderError(
            "rendered YAML nested too deeply", template=template.name
        ) from None
    scalars = _scalar_spans(roots)
    starts = [start for start, _ in scalars]
    for start, end, action in spans:
        if not text[start:end].strip():
            continue
        k = bisect_right(starts, start) - 1
        if k < 0 or scalars[k][1] < end:
            raise ArgumentError(
                f"printed {_go_quote(text[start:end])}, which is not inside one YAML scalar: "
                "it changes the structure of the rendered YAML",
                template=template.name,
                **location(action),
            )
