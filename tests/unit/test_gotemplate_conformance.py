"""chaosbus's Go-template engine against real Go, case by case.

gotemplate_fixtures/go-text-template.json holds templates, their arguments and what Go's
own text/template (Debian's golang-go, missingkey=error, sprig's quote and default)
made of them: the output, or the phase (parse or exec) and message of the error. It is
written by scripts/dev/gotemplate-fixtures.sh and committed, so these tests need no Go.

The rules, for every case:

* Go rendered: we render exactly the same text, unless REFUSED lists the case (we
  refuse on purpose) with a fragment of our error.
* Go failed while parsing: we fail while parsing (TemplateSyntaxError), unless ACCEPTED
  lists the case (a newer Go accepts it, and so do we).
* Go failed while executing: we fail too, while parsing or executing (finding a mistake
  before any pod depends on the template is deliberate).
* Both failed: the error names the same line, and our reason is Go's or begins with it,
  unless WORDING lists the case with a fragment of ours.

docs/gotemplate.md explains each difference in prose.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from chaosbus.gotemplate import Template, TemplateError, TemplateSyntaxError
from chaosbus.gotemplate.funcs import FUNCS

FIXTURES = Path(__file__).parent / "gotemplate_fixtures"
DOCUMENT = json.loads((FIXTURES / "go-text-template.json").read_text(encoding="utf-8"))
CASES: dict[str, dict[str, Any]] = {case["name"]: case for case in DOCUMENT["cases"]}

# Go renders these; we refuse them on purpose. name: (fragment of our error, why).
_NIL = "printing nil would put <no value> or <nil> into a pod spec"
_PRINTF = "a printf mistake would put Go's %!verb(...) text into a pod spec"
_UNSUPPORTED = "not used by sidecar templates, so not supported"
_LIMIT = "a bound against hostile templates (libs/chaosbus/gotemplate/limits.py)"
REFUSED: dict[str, tuple[str, str]] = {
    "field/nil-value-printed": ("refusing to print a nil value", _NIL),
    "literal/nil-argument": ("refusing to print a nil value", _NIL),
    "print/nil-in-list": ("refusing to print a nil value", _NIL),
    "printf/nil-with-v": ("refusing to format nil with %v", _NIL),
    "index/missing-map-key": ("map has no entry for key k", "like missingkey=error for fields"),
    "index/string": ("can't index item of type string", "Go would print a byte as a number"),
    "printf/wrong-verb": ("%d cannot format string", _PRINTF),
    "printf/s-of-int": ("%s needs a string, got int", _PRINTF),
    "printf/missing-argument": ("missing argument for %s", _PRINTF),
    "printf/extra-argument": ("1 argument(s) left over", _PRINTF),
    "printf/bare-percent": ("format ends with a bare %", _PRINTF),
    "printf/char-verb": ("%c cannot format int", _UNSUPPORTED),
    "printf/argument-index": ("%[ cannot format string", _UNSUPPORTED),
    "printf/star-width": ("%* cannot format int", _UNSUPPORTED),
    "pipe/missing-command-after-pipe": ("missing command after |", "a trailing | is a typo"),
    "literal/char-constant": ("unrecognized character in action", _UNSUPPORTED),
    "literal/complex": ("bad number syntax", _UNSUPPORTED),
    "range/break": ("{{break}} is not supported", _UNSUPPORTED),
    "range/continue": ("{{continue}} is not supported", _UNSUPPORTED),
    "unsupported/define-template": ("{{define}} is not supported", _UNSUPPORTED),
    "unsupported/block": ("{{block}} is not supported", _UNSUPPORTED),
    "unsupported/slice": ('function "slice" not defined', _UNSUPPORTED),
    "unsupported/html": ('function "html" not defined', _UNSUPPORTED),
    "unsupported/js": ('function "js" not defined', _UNSUPPORTED),
    "unsupported/urlquery": ('function "urlquery" not defined', _UNSUPPORTED),
    "limits/nesting-depth": ("nested more than 100 levels deep", _LIMIT),
    "limits/steps": ("more than 100000 actions and loop iterations", _LIMIT),
}

# Go 1.19 refuses these; Go 1.23 added {{else with}}, and we accept it. name: why.
ACCEPTED: dict[str, str] = {
    "with/else-with": "{{else with}} (Go 1.23)",
    "golden/with": "{{else with}} (Go 1.23)",
}

# Both fail, but our reason is worded differently. name: fragment of ours.
WORDING: dict[str, str] = {
    "field/of-string": "can't evaluate field B in type string",  # Go: interface {}
    "field/of-list": "can't evaluate field B in type []interface {}",
    # Go says only "invalid syntax" for the next two.
    "literal/string-bad-escape": "invalid escape sequence in quoted string: \\q",
    "literal/string-octal-too-big": "octal escape value > 255",
    "literal/double-underscore": "bad number syntax",  # Go: illegal number syntax
    "literal/hex-float-without-exponent": "bad number syntax",
    "if/double-else": "expected {{end}}; found {{else}}",
    "range/string": "range can't iterate over string value",  # Go prints the value
    "range/int": "range can't iterate over int value",
    "range/bool": "range can't iterate over bool value",
    "range/int-literal": "range can't iterate over int value",
    "range/three-variables": "expected := or = in range",
    "range/else-if": "unexpected <if> in else",
    "variable/assign-undefined": 'undefined variable "$x"',
    "variable/declare-colon-alone": "expected :=",
    "pipe/field-stage": "non executable command in pipeline stage 2",
    "pipe/argument-to-non-function": "can't give argument to non-function .X",
    "pipe/unexpected-right-paren": "unexpected right paren",
    "cmp/eq-list": "non-comparable type []interface {}",
    "cmp/eq-one-arg": "wrong number of args for eq: want at least 2 got 1",
    "len/nil": "len of type nil",
    "index/list-with-string": "cannot index slice with type string",
    "printf/non-string-format": "printf format must be a string, not int",
    "unsupported/call": 'function "call" not defined',
}

# Go's messages and ours: `template: NAME:LINE[:COL]: [executing "NAME" at <CONTEXT>: ]REASON`.
_MESSAGE = re.compile(
    r"template: (?P<name>.+?):(?P<line>\d+)(?::\d+)?: "
    r'(?:executing "(?P=name)" at <(?P<context>.*?)>: )?(?P<reason>.*)',
    re.DOTALL,
)


def ours(case: dict[str, Any]) -> tuple[str, str]:
    """("output", text), ("parse", message) or ("exec", message) from our engine."""
    try:
        template = Template.parse(case["template"], case["name"])
    except TemplateSyntaxError as exc:
        return "parse", str(exc)
    try:
        return "output", template.render(case["data"])
    except TemplateError as exc:
        return "exec", str(exc)


def parts(message: str) -> re.Match[str]:
    match = _MESSAGE.fullmatch(message)
    assert match is not None, f"not a template error message: {message!r}"
    return match


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_against_go(name: str) -> None:
    case = CASES[name]
    kind, text = ours(case)
    if "output" in case:
        if name in REFUSED:
            assert kind != "output", f"{name} is listed in REFUSED but renders: {text!r}"
            assert REFUSED[name][0] in text
        else:
            assert (kind, text) == ("output", case["output"])
        return
    go_phase, go_message = case["error"]["phase"], case["error"]["message"]
    if name in ACCEPTED:
        assert kind == "output", f"{name} is listed in ACCEPTED but fails: {text}"
        return
    assert kind != "output", f"Go fails ({go_message}), we render {text!r}"
    if go_phase == "parse":
        assert kind == "parse", f"Go fails while parsing, we only while executing: {text}"
    go, we = parts(go_message), parts(text)
    assert we["line"] == go["line"], (go_message, text)
    if name in WORDING:
        assert WORDING[name] in we["reason"]
        assert not we["reason"].startswith(go["reason"]), f"{name}: WORDING is stale"
    else:
        assert we["reason"].startswith(go["reason"]), (go_message, text)


def test_every_listed_difference_names_a_case_of_the_right_kind() -> None:
    for name in REFUSED:
        assert "output" in CASES[name], name
    for name in (*ACCEPTED, *WORDING):
        assert "error" in CASES[name], name


def test_the_outputs_come_from_go() -> None:
    assert re.fullmatch(r"go1\.\d+(\.\d+)?", DOCUMENT["go"])
    assert len(CASES) == len(DOCUMENT["cases"]) >= 150  # names are unique


def test_every_function_and_construct_is_exercised() -> None:
    templates = "\n".join(case["template"] for case in CASES.values())
    words = set(re.findall(r"[A-Za-z_]\w*", templates))
    assert set(FUNCS) <= words
    for construct in ("{{if", "{{else if", "{{range", "{{with", "{{else}}", "{{end}}",
                      ":=", " = ", "|", "(", "{{/*", "{{- ", " -}}", "$", "`"):  # fmt: skip
        assert construct in templates, construct


@pytest.mark.parametrize(
    "name", sorted(p.name.removesuffix(".tmpl") for p in (FIXTURES / "golden").glob("*.tmpl"))
)
def test_hand_written_golden_output_is_what_go_renders(name: str) -> None:
    case = CASES[f"golden/{name}"]
    expected = (FIXTURES / "golden" / f"{name}.out").read_text(encoding="utf-8")
    if f"golden/{name}" in ACCEPTED:
        assert "error" in case  # Go 1.19 cannot check it; test_gotemplate.py checks ours
    else:
        assert case["output"] == expected
