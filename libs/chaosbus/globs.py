"""Path globs and path regexes for fault rules, matched in linear time.

A glob is matched against a path relative to the mount root, without a leading
slash ("" is the root itself). ``*`` and ``?`` stay inside one path segment,
``**`` as a whole segment spans any number of segments (zero included, so
``dir/**`` covers ``dir`` itself), and
``[...]`` is a character class. Globs are compiled when a rule is set, and the
compiled pattern is kept by its text for the next rule that names it.

A path regex is what Chaos Mesh v0.9's IoChaos ``path`` was: a regular expression
searched anywhere in "/" + the path relative to the mount root (the root itself
is "/"), so "/wal/" hits every file under any directory named wal.

Both compile to RE2 (google-re2), whose matching time grows linearly with the
path and the pattern. Python's backtracking ``re`` took seconds per ``touch``
for a glob such as ``**/**/**/**/**/**/**/**/x``, on the thread that serves
every file operation of the mount.

Paths come from ``os.fsdecode``, so a name that is not valid UTF-8 holds lone
surrogates; both patterns and paths are encoded with ``surrogatepass``, which
keeps each such byte one character for ``?`` and ``*`` as Python's ``re`` did.
"""

from __future__ import annotations

import functools
from typing import Any

import re2

MAX_GLOB_LENGTH = 1024
MAX_REGEX_LENGTH = 1024
# Compiled patterns kept by their source text, the least recently used dropped first.
# The same few globs come back all the time (a fleet command and the desired-state
# entry that records it, a rule recovered and set again, a schedule's next run), and
# compiling one costs a few RE2 compilations; matching from a shared pattern is safe,
# as a compiled pattern is never changed. Bounded in count, and each entry in size
# (MAX_GLOB_LENGTH, MAX_REGEX_LENGTH): hostile globs ("*a*a...") take 13-30 KB each
# once compiled and matched, so a full cache holds a few MB at most.
COMPILED_CACHE_SIZE = 256


class GlobError(ValueError):
    pass


def _options(max_mem: int = 8 << 20) -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # errors are raised to the caller, not printed on stderr
    options.max_mem = max_mem
    return options


_OPTIONS = _options()


def encode(path: str) -> bytes:
    """A path as the bytes RE2 matches (see the module docstring)."""
    return path.encode("utf-8", "surrogatepass")


def compile_re2(pattern: str, *, max_mem: int = 8 << 20) -> Any:
    """Compile an RE2 pattern (raises ``re2.error``)."""
    options = _OPTIONS if max_mem == 8 << 20 else _options(max_mem)
    return re2.compile(encode(pattern), options)


class PathPattern:
    """A compiled glob or path regex with the ``re.Pattern`` methods callers use.

    ``match(path)`` and ``fullmatch(path)`` answer whether the pattern covers
    ``path`` (relative to the mount root, no leading slash): a match object or
    None. ``pattern`` is RE2 source: for a glob, one that matches exactly the
    covered relative paths; for a path regex, the regex as given. ``rooted``
    is RE2 source that fullmatches "/" + path exactly when the pattern covers
    path, so that patterns of both kinds can be joined into one alternation;
    ``size`` is RE2's measure of the compiled program, to keep such joins small.
    """

    __slots__ = ("_rx", "kind", "pattern", "rooted", "size", "source")

    def __init__(self, kind: str, source: str, pattern: str, rooted: str, rx: Any) -> None:
        self.kind = kind  # "glob" or "regex"
        self.source = source  # what the rule said
        self.pattern = pattern
        self.rooted = rooted
        self.size = int(rx.programsize)
        self._rx = rx

    def hit(self, data: bytes) -> bool:
        """Whether the pattern covers a path already passed through ``encode``."""
        if self.kind == "glob":
            return self._rx.fullmatch(data) is not None
        return self._rx.search(b"/" + data) is not None

    def match(self, path: str) -> Any:
        data = encode(path)
        if self.kind == "glob":
            return self._rx.fullmatch(data)
        return self._rx.search(b"/" + data)

    fullmatch = match

    def __repr__(self) -> str:
        return f"PathPattern({self.kind}, {self.source!r})"


def compile_glob(glob: str) -> PathPattern:
    """The glob compiled (raises ``GlobError``); the same text gives the same,
    shared, pattern while it is among the last ``COMPILED_CACHE_SIZE`` asked for."""
    return _compile_glob(glob)


def compile_path_regex(regex: str) -> PathPattern:
    """A Chaos Mesh v0.9 style path regex; ``GlobError`` names the field at fault.
    Shared as ``compile_glob``'s patterns are."""
    return _compile_path_regex(regex)


@functools.lru_cache(maxsize=COMPILED_CACHE_SIZE)  # errors are raised, never kept
def _compile_glob(glob: str) -> PathPattern:
    if len(glob) > MAX_GLOB_LENGTH:
        raise GlobError(f"path glob is longer than {MAX_GLOB_LENGTH} characters")
    if "\x00" in glob:
        raise GlobError("path glob contains a NUL byte")
    source = glob
    glob = glob.strip("/")
    parts = glob.split("/") if glob else []
    # "**/**" spans exactly what one "**" spans; collapsing runs keeps the
    # pattern small (and makes "dir/**/**" cover dir, as "dir/**" does).
    parts = [p for i, p in enumerate(parts) if not (p == "**" and i and parts[i - 1] == "**")]
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
    body = "".join(out)
    pattern = f"(?s){body}\\z"
    try:
        rx = compile_re2(pattern)
    except re2.error as exc:
        raise GlobError(f"invalid path glob {glob!r}: {_reason(exc)}") from None
    return PathPattern("glob", source, pattern, f"(?s)/{body}", rx)


@functools.lru_cache(maxsize=COMPILED_CACHE_SIZE)
def _compile_path_regex(regex: str) -> PathPattern:
    if len(regex) > MAX_REGEX_LENGTH:
        raise GlobError(f"path_regex is longer than {MAX_REGEX_LENGTH} characters")
    if "\x00" in regex:
        raise GlobError("path_regex contains a NUL byte")
    if not regex:
        raise GlobError("path_regex must not be empty (leave it out to mean every path)")
    try:
        rx = compile_re2(regex)
    except re2.error as exc:
        raise GlobError(f"path_regex is not a valid RE2 expression: {_reason(exc)}") from None
    # A search anywhere is a full match with anything either side. A regex ending
    # inside an unterminated \Q...  would swallow the closing parenthesis: \E ends it.
    for inner in (regex, regex + "\\E"):
        rooted = f"(?s:.*)(?:{inner})(?s:.*)"
        try:
            compile_re2(rooted)
        except re2.error:
            continue
        return PathPattern("regex", regex, regex, rooted, rx)
    raise GlobError("path_regex cannot be combined with other rules' paths")


def _reason(exc: Exception) -> str:
    text = exc.args[0] if exc.args else str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text)


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
            out.append(_escape(ch))
        i += 1
    pattern = "".join(out)
    try:
        compile_re2(pattern)
    except re2.error as exc:
        raise GlobError(f"invalid path glob {glob!r}: {_reason(exc)}") from None
    return pattern


def _escape(ch: str) -> str:
    """One literal character in RE2 syntax (RE2 rejects Python's escapes of letters)."""
    if ch.isascii() and not ch.isalnum() and ch != "_":
        return "\\" + ch
    return ch
