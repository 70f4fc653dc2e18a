"""Go-style command-line flags, as Chaos Mesh v0.9's sidecar templates pass them.

``-name value``, ``-name=value``, ``--name value`` and ``--name=value`` are all
accepted; boolean flags take no value. Errors raise ``FlagError`` with a
one-line reason, and callers exit 2 with it, as Go's flag package does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


class FlagError(ValueError):
    pass


@dataclass(frozen=True)
class Flag:
    name: str
    help: str
    default: Any = None
    parse: Callable[[str], Any] = str
    boolean: bool = False
    metavar: str = "VALUE"


def parse_flags(flags: Sequence[Flag], argv: Sequence[str]) -> dict[str, Any]:
    table = {f.name: f for f in flags}
    values: dict[str, Any] = {f.name: f.default for f in flags}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-", "--") or not arg.startswith("-"):
            raise FlagError(f"unexpected argument {arg!r}")
        name, eq, value = arg.lstrip("-").partition("=")
        flag = table.get(name)
        if flag is None:
            raise FlagError(f"flag provided but not defined: -{name}")
        if flag.boolean:
            if eq:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise FlagError(f"invalid boolean value {value!r} for flag -{name}")
                values[name] = value.lower() in ("true", "1")
            else:
                values[name] = True
            continue
        if not eq:
            if i >= len(args):
                raise FlagError(f"flag needs an argument: -{name}")
            value = args[i]
            i += 1
        try:
            values[name] = flag.parse(value)
        except ValueError as exc:
            raise FlagError(f"invalid value {value!r} for flag -{name}: {exc}") from None
    return values


def usage(program: str, flags: Sequence[Flag]) -> str:
    lines = [f"Usage of {program}:"]
    for f in flags:
        lines.append(f"  -{f.name}" + ("" if f.boolean else f" {f.metavar}"))
        default = "" if f.default in (None, False, "") else f" (default {f.default})"
        lines.append(f"    \t{f.help}{default}")
    return "\n".join(lines)
