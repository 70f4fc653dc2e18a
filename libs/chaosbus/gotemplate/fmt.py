"""Printing as Go's fmt package prints: %v, strconv.Quote, print, println and printf.

printf is stricter than Go: a verb that does not fit its argument, or a count of
arguments that does not fit the format, is an error instead of `%!d(string=x)` text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .errors import Fail
from .limits import MAX_DEPTH, MAX_WIDTH
from .values import go_type, kind_of, sorted_keys


def to_text(v: Any, depth: int = 0) -> str:
    """Go's %v for the values YAML arguments can hold; nil is refused, not `<no value>`."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return go_float(v)
    if v is None:
        raise Fail("refusing to print a nil value (Go would print <no value>)")
    if depth >= MAX_DEPTH:
        raise Fail("value nested too deeply")
    if isinstance(v, list | tuple):
        return "[" + " ".join(to_text(x, depth + 1) for x in v) + "]"
    if isinstance(v, Mapping):
        items = (f"{to_text(k, depth + 1)}:{to_text(v[k], depth + 1)}" for k in sorted_keys(v))
        return "map[" + " ".join(items) + "]"
    raise Fail(f"cannot print a value of type {type(v).__name__}")


def go_float(f: float) -> str:
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


# Go's backslash escapes, shared by string literals (lex) and strconv.Quote (below).
ESCAPES = {
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
_QUOTE_ESCAPES = {v: "\\" + k for k, v in ESCAPES.items() if k not in '\\"'}


def go_quote(s: str) -> str:
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


def go_print(*args: Any) -> str:
    """fmt.Sprint: a space between operands when neither is a string."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(to_text(arg))
    return "".join(out)


def go_println(*args: Any) -> str:
    return " ".join(to_text(a) for a in args) + "\n"


_VERB = re.compile(r"%([-+# 0]*)([0-9]*)(?:\.([0-9]*))?(.?)", re.DOTALL)


def printf(fmt: Any, *args: Any) -> str:
    if not isinstance(fmt, str):
        raise Fail(f"printf format must be a string, not {go_type(fmt)}")
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
            raise Fail("format ends with a bare %")
        if used >= len(args):
            raise Fail(f"missing argument for %{verb}")
        spec = _Spec(flags, int(width or 0), None if precision is None else int(precision or 0))
        if spec.width > MAX_WIDTH or (spec.precision or 0) > MAX_WIDTH:
            raise Fail("width or precision too large")
        out.append(spec.format(verb, args[used]))
        used += 1
    out.append(fmt[pos:])
    if used < len(args):
        raise Fail(f"{len(args) - used} argument(s) left over")
    return "".join(out)


@dataclass(frozen=True)
class _Spec:
    """One printf verb's flags, width and precision, formatted the way Go's fmt does."""

    flags: str
    width: int
    precision: int | None

    def format(self, verb: str, v: Any) -> str:
        kind = kind_of(v)
        if "#" in self.flags and verb not in "xXob":
            raise Fail(f"flag # with %{verb} is not supported")
        if verb == "v" and kind in ("int", "float"):
            verb = "d" if kind == "int" else "g"
        if verb in "sv" or (verb in "xX" and kind == "string"):
            return self._text(verb, v, kind)
        # Any other verb fits one kind of value only (see _BY_KIND below).
        fits = _BY_KIND.get(kind)
        if fits is None or verb not in fits[0]:
            raise Fail(f"%{verb} cannot format {go_type(v)} {to_text(v)!r}")
        return fits[1](self, verb, v)

    def _text(self, verb: str, v: Any, kind: str) -> str:
        """%v of anything but a number, %s of a string, %x and %X of a string's bytes."""
        if kind == "nil":
            raise Fail(f"refusing to format nil with %{verb}")
        if verb == "s" and kind != "string":
            raise Fail(f"%s needs a string, got {go_type(v)}")
        text = to_text(v)[: self.precision]
        if verb in "xX":
            text = self._hex_bytes(verb, text)
        return self.pad(text, zero_ok=True)

    def _hex_bytes(self, verb: str, text: str) -> str:
        """A string's UTF-8 bytes in hexadecimal; with #, 0x in front unless empty."""
        text = text.encode("utf-8", "surrogatepass").hex()
        text = "0x" + text if text and "#" in self.flags else text
        return text.upper() if verb == "X" else text

    def _quoted(self, verb: str, v: str) -> str:
        """%q of a string: strconv.Quote of the text cut to the precision."""
        return self.pad(go_quote(v[: self.precision]), zero_ok=True)

    def _bool(self, verb: str, v: bool) -> str:
        """%t of a bool."""
        return self.pad("true" if v else "false", zero_ok=True)

    def _integer(self, verb: str, v: int) -> str:
        """%d, %x, %X, %o and %b of an int; the verb is also Python's format code."""
        body = format(abs(v), verb)
        if self.precision is not None:
            body = body.rjust(self.precision, "0")
        elif "0" in self.flags and "-" not in self.flags:
            # Go pads the digits with zeros, leaving room for a sign but not for
            # the # prefix: %#08x of 255 is 0x000000ff.
            body = body.rjust(self.width - (v < 0 or "+" in self.flags or " " in self.flags), "0")
        return self.number(v < 0, self._integer_prefix(verb, body) + body, zero_ok=False)

    def _integer_prefix(self, verb: str, digits: str) -> str:
        """What the # flag puts before an int's digits."""
        if "#" not in self.flags:
            return ""
        if verb == "o":
            return "" if digits.startswith("0") else "0"  # Go's %#o: one leading zero
        return {"x": "0x", "X": "0X", "b": "0b"}.get(verb, "")

    def _float(self, verb: str, v: float) -> str:
        """%e, %E, %f, %F, %g and %G of a float; %g and %G without a precision print
        the shortest digits that read back as the same float, as Go does."""
        if math.isinf(v) or math.isnan(v):
            return self._not_finite(v)
        if verb in "gG" and self.precision is None:
            body = go_float(abs(v))
        else:
            body = format(abs(v), f".{6 if self.precision is None else self.precision}{verb}")
        body = body.upper() if verb in "EG" else body
        return self.number(math.copysign(1, v) < 0, body, zero_ok=True)

    def _not_finite(self, v: float) -> str:
        """+Inf, -Inf or NaN (+NaN with the + flag), padded with spaces only."""
        text = go_float(v)
        if "+" in self.flags and text == "NaN":
            text = "+NaN"
        return self.pad(text, zero_ok=False)

    def number(self, negative: bool, body: str, *, zero_ok: bool) -> str:
        sign = "-" if negative else "+" if "+" in self.flags else " " if " " in self.flags else ""
        if zero_ok and "0" in self.flags and "-" not in self.flags:
            body = body.rjust(self.width - len(sign), "0")
        return self.pad(sign + body, zero_ok=False)

    def pad(self, text: str, *, zero_ok: bool) -> str:
        if "-" in self.flags:
            return text.ljust(self.width)
        return text.rjust(self.width, "0" if zero_ok and "0" in self.flags else " ")


# The verbs that fit each kind of value besides %v, %s and %x of a string, and the
# method that formats them; any other pairing of verb and value is refused.
_BY_KIND: dict[str, tuple[str, Callable[[_Spec, str, Any], str]]] = {
    "string": ("q", _Spec._quoted),
    "bool": ("t", _Spec._bool),
    "int": ("dxXob", _Spec._integer),
    "float": ("eEfFgG", _Spec._float),
}
