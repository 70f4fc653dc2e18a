"""The lexer: template text into tokens, as Go's text/template/parse lexer does.

Text outside `{{ }}` becomes one TEXT token (already trimmed by `{{-` and `-}}`);
inside an action, every word, literal and punctuation mark becomes a token. String and
number literals are decoded here, so a bad literal is refused with its position.
"""

from __future__ import annotations

import enum
import math
import re
import string
from typing import Any, NamedTuple

from .errors import TemplateSyntaxError, line_col
from .fmt import ESCAPES, go_quote

# Go's isSpace: what trim markers remove, and what separates words in an action.
SPACES = " \t\r\n"


class K(enum.Enum):
    """Token kinds."""

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


class Token(NamedTuple):
    kind: K
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
# Digits, letters, `_` and `.`, and a sign only right after an exponent letter: anything
# Go's scanNumber could accept; what does not convert below is "bad number syntax".
_NUMBER = re.compile(r"[+-]?[0-9.][0-9A-Za-z_.]*(?:(?<=[eEpP])[+-][0-9A-Za-z_.]*)*")


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or c.isdecimal()


def go_rune(c: str) -> str:
    return f"U+{ord(c):04X} {c!r}"


class Lexer:
    """One pass over the text; run() returns every token, ending with EOF."""

    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name
        self.tokens: list[Token] = []

    def error(self, pos: int, reason: str) -> TemplateSyntaxError:
        line, column = line_col(self.text, pos)
        return TemplateSyntaxError(reason, template=self.name, line=line, column=column)

    def emit(self, kind: K, value: Any, pos: int, end: int) -> None:
        self.tokens.append(Token(kind, value, pos, end))

    def run(self) -> list[Token]:
        text, pos, trim_next = self.text, 0, False
        while True:
            start = text.find("{{", pos)
            stop = len(text) if start < 0 else start
            # Go's trim markers need the space: `{{-3}}` is the number -3.
            left_trim = (
                start >= 0
                and text[start + 2 : start + 3] == "-"
                and (text[start + 3 : start + 4] in tuple(SPACES))
            )
            chunk = text[pos:stop]
            if trim_next:
                chunk = chunk.lstrip(SPACES)
            if left_trim:
                chunk = chunk.rstrip(SPACES)
            if chunk:
                self.emit(K.TEXT, chunk, pos, stop)
            if start < 0:
                break
            inner = start + (4 if left_trim else 2)
            if text.startswith("/*", inner):
                pos, trim_next = self.comment(start, inner)
            else:
                self.emit(K.LEFT, None, start, start + 2)
                pos, trim_next = self.action(start, inner)
        self.emit(K.EOF, None, len(text), len(text))
        return self.tokens

    def right_delim(self, pos: int) -> tuple[int, bool] | None:
        """(end, trims) if a closing delimiter starts at pos: `}}` or ` -}}`."""
        if self.text.startswith("}}", pos):
            return pos + 2, False
        if self.text[pos : pos + 1] in tuple(SPACES) and self.text.startswith("-}}", pos + 1):
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
        simple = {"|": K.PIPE, "(": K.LPAREN, ")": K.RPAREN, ",": K.COMMA, "=": K.ASSIGN}
        while True:
            delim = self.right_delim(pos)
            if delim is not None:
                self.emit(K.RIGHT, None, pos, delim[0])
                return delim
            if pos >= n:
                raise self.error(start, "unclosed action")
            c = text[pos]
            if c in SPACES:
                end = pos
                while end < n and text[end] in SPACES:
                    end += 1
                if text.startswith("-}}", end):
                    end -= 1  # the last space belongs to the ` -}}` trim marker
                if end > pos:
                    self.emit(K.SPACE, None, pos, end)
                pos = end
            elif c in simple:
                self.emit(simple[c], c, pos, pos + 1)
                pos += 1
            elif c == ":":
                if not text.startswith(":=", pos):
                    raise self.error(pos, "expected :=")
                self.emit(K.DECLARE, ":=", pos, pos + 2)
                pos += 2
            elif c == '"':
                pos = self.quoted(pos)
            elif c == "`":
                end = text.find("`", pos + 1)
                if end < 0:
                    raise self.error(pos, "unterminated raw quoted string")
                # Go's strconv.Unquote drops carriage returns from raw strings.
                self.emit(K.STRING, text[pos + 1 : end].replace("\r", ""), pos, end + 1)
                pos = end + 1
            elif c == "$":
                pos = self.word(pos, K.VARIABLE)
            elif c == "." and not "0" <= text[pos + 1 : pos + 2] <= "9":
                pos = self.word(pos, K.FIELD)
            elif c in "+-." or "0" <= c <= "9":
                pos = self.number(pos)
            elif c == "_" or c.isalpha():
                pos = self.word(pos, K.IDENT)
            else:
                raise self.error(pos, f"unrecognized character in action: {go_rune(c)}")

    def at_terminator(self, pos: int) -> bool:
        return (
            pos >= len(self.text)
            or self.text[pos] in SPACES + ".,|:()"
            or (self.right_delim(pos) is not None)
        )

    def word(self, pos: int, kind: K) -> int:
        end = pos if kind is K.IDENT else pos + 1  # skip the `$` or `.`
        while end < len(self.text) and _is_alnum(self.text[end]):
            end += 1
        if not self.at_terminator(end):
            raise self.error(end, f"bad character {go_rune(self.text[end])}")
        word = self.text[pos:end]
        value: Any
        if kind is K.FIELD:
            kind, value = (K.DOT, None) if word == "." else (K.FIELD, word[1:])
        elif kind is K.VARIABLE:
            value = word
        elif word in _KEYWORDS:
            kind, value = K.KEYWORD, word
        elif word in ("true", "false"):
            kind, value = K.BOOL, word == "true"
        elif word == "nil":
            kind, value = K.NIL, None
        else:
            value = word
        self.emit(kind, value, pos, end)
        return end

    def number(self, pos: int) -> int:
        match = _NUMBER.match(self.text, pos)
        raw = match.group() if match else self.text[pos]
        try:
            value = parse_number(raw)
        except ValueError as exc:
            raise self.error(pos, f"{exc}: {go_quote(raw)}") from None
        self.emit(K.NUMBER, value, pos, pos + len(raw))
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
            value = unquote(text[pos + 1 : i])
        except ValueError as exc:
            raise self.error(pos, str(exc)) from None
        self.emit(K.STRING, value, pos, i + 1)
        return i + 1


def parse_number(raw: str) -> int | float:
    """Go's number literals: ints (0x, 0o, 0b, leading-0 octal, `_`) and floats (also 0x...p).

    Raises ValueError with Go's reason: "bad number syntax" or "integer overflow".
    """
    body = raw.lstrip("+-").lower()
    try:
        if re.fullmatch(r"0[0-7]+", body):
            value: int | float = int(raw, 8)
        elif body[:2] == "0x" and "p" in body:  # a hexadecimal float: 0x1p-2 is 0.25
            value = float.fromhex(raw)
        elif body[:2] in ("0x", "0o", "0b") or not re.search(r"[.ep]", body):
            value = int(raw, 0)
        else:
            value = float(raw)
    except ValueError:
        raise ValueError("bad number syntax") from None
    if isinstance(value, float) and math.isinf(value):
        raise ValueError("bad number syntax")  # Go: value out of range
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ValueError("integer overflow")
    return value


def unquote(raw: str) -> str:
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
        if e in ESCAPES:
            out += ESCAPES[e].encode()
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
