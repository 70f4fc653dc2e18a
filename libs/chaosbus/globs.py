"""Path globs for fault rules.

A glob is matched against a path relative to the mount root, without a leading
slash ("" is the root itself). ``*`` and ``?`` stay inside one path segment,
``**`` as a whole segment spans any number of segments (zero included, so
``dir/**`` covers ``dir`` itself), and
``[...]`` is a character class. Globs are compiled once, when a rule is set.
"""

from __future__ import annotations

import re

MAX_GLOB_LENGTH = 1024


class GlobError(ValueError):
    pass


def compile_glob(glob: str) -> re.Pattern[str]:
    if len(glob) > MAX_GLOB_LENGTH:
        raise GlobError(f"path glob is longer than {MAX_GLOB_LENGTH} characters")
    if "\x00" in glob:
        raise GlobError("path glob contains a NUL byte")
    glob = glob.strip("/")
    if not glob:
        return re.compile(r"\Z")  # only the mount root
    parts = glob.split("/")
    out: list[str] = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            if not last:
                out.append("(?:[^/]*/)*")  # any number of whole segments, even none
            elif index == 0:
                out.append(".*")
            else:
                # "dir/**" covers dir itself as well as everything below it.
                out[-1] = "(?:/.*)?"
            continue
        if "**" in part:
            raise GlobError(f"'**' must be a whole path segment in {glob!r}")
        if part == "":
            raise GlobError(f"empty path segment in {glob!r}")
        out.append(_segment(part, glob))
        if not last:
            out.append("/")
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _segment(part: str, glob: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(part):
        ch = part[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = part.find("]", i + 2 if part[i + 1 : i + 2] in ("!", "^", "]") else i + 1)
            if end < 0:
                raise GlobError(f"unclosed '[' in path glob {glob!r}")
            body = part[i + 1 : end]
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            if not body:
                raise GlobError(f"empty character class in path glob {glob!r}")
            body = body.replace("\\", "\\\\").replace("^", "\\^")
            out.append(f"[{'^/' if negate else ''}{body}]")
            i = end
        elif ch == "]":
            raise GlobError(f"unmatched ']' in path glob {glob!r}")
        else:
            out.append(re.escape(ch))
        i += 1
    pattern = "".join(out)
    try:
        re.compile(pattern)
    except re.error as exc:
        raise GlobError(f"invalid path glob {glob!r}: {exc}") from None
    return pattern
