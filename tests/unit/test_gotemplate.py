"""The Go text/template renderer: golden renders, refusals, YAML safety, fuzzing.

Each golden case is gotemplate_fixtures/golden/NAME.tmpl rendered with NAME.args.yaml;
NAME.out was written by hand from Go's semantics and is checked against real Go by
test_gotemplate_conformance.py (the same cases are in its corpus).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaosbus.gotemplate import (
    ArgumentError,
    Template,
    TemplateError,
    TemplateRenderError,
    TemplateSyntaxError,
    check_yaml_safe_arguments,
)
from chaosbus.gotemplate import exec as gotemplate_exec

GOLDEN = Path(__file__).parent / "gotemplate_fixtures" / "golden"
CASES = sorted(p.name.removesuffix(".tmpl") for p in GOLDEN.glob("*.tmpl"))
# Chaos Mesh v0.9.1's own files lie beside the checkout when there is one.
SEED = Path(__file__).resolve().parents[3] / "shared" / "seed" / "chaos-mesh-v0.9.1"
TIKV_ARGS = {
    "ContainerName": "tikv",
    "DataPath": "/var/lib/tikv/data",
    "MountPath": "/var/lib/tikv",
    "VolumeName": "tikv",
}


def golden(name: str) -> tuple[Template, dict, str]:
    text = (GOLDEN / f"{name}.tmpl").read_text(encoding="utf-8")
    args = yaml.safe_load((GOLDEN / f"{name}.args.yaml").read_text(encoding="utf-8"))
    expected = (GOLDEN / f"{name}.out").read_text(encoding="utf-8")
    return Template.parse(text, name), args, expected


def render(text: str, args: dict | None = None, name: str = "t") -> str:
    return Template.parse(text, name).render({} if args is None else args)


# ----------------------------------------------------------------------------- golden


def test_every_construct_has_a_golden_case():
    assert {"chaosfs-sidecar", "trim", "comments", "if", "range", "with"} <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_golden(name):
    template, args, expected = golden(name)
    assert template.render(args) == expected


def test_rendering_again_gives_the_same_and_leaves_args_alone():
    template, args, expected = golden("range")
    before = yaml.safe_dump(args)
    assert template.render(args) == template.render(args) == expected
    assert yaml.safe_dump(args) == before


@pytest.mark.skipif(
    not SEED.is_dir(), reason="Chaos Mesh v0.9.1's files are not beside this checkout"
)
@pytest.mark.parametrize("config", ["tikv", "pd"])
def test_chaos_mesh_template_renders_each_of_its_configs(config):
    """Chaos Mesh v0.9's own files, as it read them, render as plain substitution."""
    template_cm = yaml.safe_load((SEED / "chaosfs-sidecar.yaml").read_text())
    text = template_cm["data"]["data"]
    assert text == (GOLDEN / "chaosfs-sidecar.tmpl").read_text()
    config_cm = yaml.safe_load((SEED / f"{config}-configmap.yaml").read_text())
    arguments = yaml.safe_load(config_cm["data"][f"chaosfs-{config}"])["arguments"]
    expected = text
    for key, value in arguments.items():
        expected = expected.replace("{{." + key + "}}", value)
    template = Template.parse(text, "chaosfs-sidecar")
    assert template.render(arguments) == expected
    assert template.render_yaml(arguments) == expected
    rendered = yaml.safe_load(expected)
    assert rendered["postStart"] == {config: {"command": ["/tmp/scripts/wait-fuse.sh"]}}


def test_chaos_mesh_golden_is_safe_yaml():
    template, args, expected = golden("chaosfs-sidecar")
    assert args == TIKV_ARGS
    assert template.render_yaml(args) == expected


def test_trim_markers_remove_carriage_returns_and_tabs_too():
    assert render("a \t\r\n {{- .X -}} \r\n\tb", {"X": 1}) == "a1b"


def test_trim_marker_needs_its_space():
    assert render("{{-1}}| {{- 1 -}} |") == "-1|1|"


# --------------------------------------------------------------------------- refusals


def test_missing_key_names_template_line_and_column():
    template = Template.parse("initContainers:\n  - name: {{.Missing}}\n", "chaosfs-sidecar")
    with pytest.raises(TemplateRenderError) as caught:
        template.render(TIKV_ARGS)
    err = caught.value
    assert (err.template, err.line, err.column) == ("chaosfs-sidecar", 2, 13)
    assert str(err).startswith("template: chaosfs-sidecar:2:13: ")
    assert 'map has no entry for key "Missing"' in str(err)
    assert "<no value>" not in template.text


def test_missing_nested_key_and_default_does_not_hide_it():
    # As in Go with missingkey=error, `default` only replaces empty values.
    with pytest.raises(TemplateRenderError, match='no entry for key "B"'):
        render("{{.A.B}}", {"A": {}})
    with pytest.raises(TemplateRenderError, match='no entry for key "X"'):
        render('{{.X | default "y"}}')


@pytest.mark.parametrize(
    ("text", "message", "line", "column"),
    [
        ("a\n{{.X", "unclosed action", 2, 1),
        ("{{.X | foo}}", 'function "foo" not defined', 1, 8),
        ("x{{end}}", "unexpected {{end}}", 1, 4),
        ("{{else}}", "unexpected {{else}}", 1, 3),
        ('{{"abc}}', "unterminated quoted string", 1, 3),
        ("{{`abc}}", "unterminated raw quoted string", 1, 3),
        ("\n\n  {{if .X}}a", "unexpected EOF: {{if}} has no {{end}}", 3, 5),
        ("{{range .X}}{{else}}{{else}}{{end}}", "expected {{end}}; found {{else}}", 1, 23),
        ("{{range .X}}{{else if .Y}}{{end}}", "unexpected <if> in else", 1, 20),
        ("{{/* x }}", "unclosed comment", 1, 1),
        ("{{/* x */ }}", "comment ends before closing delimiter", 1, 8),
        ('{{.X | "a"}}', "non executable command in pipeline stage 2", 1, 8),
        ("{{.X | .Y}}", "non executable command in pipeline stage 2", 1, 8),
        ("{{.X .Y}}", "can't give argument to non-function .X", 1, 6),
        ("{{nil}}", "nil is not a command", 1, 3),
        ("{{$x}}", 'undefined variable "$x"', 1, 3),
        ("{{$x = 1}}", 'undefined variable "$x"', 1, 3),
        ("{{if true}}{{$x := 1}}{{end}}{{$x}}", 'undefined variable "$x"', 1, 32),
        ("{{(.X}}", "unclosed left paren", 1, 6),
        ("{{.X)}}", "unexpected right paren", 1, 5),
        ("{{}}", "missing value for command", 1, 3),
        ("{{if}}{{end}}", "missing value for if", 1, 5),
        ("{{.X |}}", "missing command after |", 1, 7),
        ("{{not}}", "wrong number of args for not: want 1 got 0", 1, 3),
        ("{{.X | eq}}", "wrong number of args for eq: want at least 2 got 1", 1, 8),
        ("{{printf}}", "wrong number of args for printf: want at least 1 got 0", 1, 3),
        ('{{template "x"}}', "{{template}} is not supported", 1, 3),
        ("{{break}}", "{{break}} is not supported", 1, 3),
        ('{{"\\q"}}', "invalid escape sequence", 1, 3),
        ('{{"\\400"}}', "octal escape value > 255", 1, 3),
        ('{{"\\xff"}}', "not valid UTF-8", 1, 3),
        ("{{1a}}", "bad number syntax", 1, 3),
        ("{{99999999999999999999}}", "integer overflow", 1, 3),
        ("{{'a'}}", "unrecognized character in action: U+0027", 1, 3),
        ("{{.X=1}}", "bad character U+003D", 1, 5),
        ('{{.X"a"}}', "bad character U+0022", 1, 5),
        ("{{.X(1)}}", 'unexpected "(" in operand', 1, 5),
        ('{{"a".X}}', "unexpected . after term", 1, 3),
        ("{{$x, $y := .}}", "too many declarations in command", 1, 5),
        ("{{with $x := .X}}{{end}}{{if .}}{{end}}{{$x}}", 'undefined variable "$x"', 1, 42),
        ("{{" + "(" * 120 + "1" + ")" * 120 + "}}", "nested more than 100 levels deep", 1, 103),
    ],
)
def test_syntax_errors(text, message, line, column):
    with pytest.raises(TemplateSyntaxError) as caught:
        Template.parse(text, "bad")
    err = caught.value
    assert message in str(err)
    assert (err.template, err.line, err.column) == ("bad", line, column), str(err)
    assert str(err).startswith(f"template: bad:{line}:{column}: ")


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ("{{.A.B}}", {"A": "s"}, "can't evaluate field B in type string"),
        ("{{.A.B}}", {"A": None}, "nil pointer evaluating interface {}.B"),
        ("{{.A}}", {"A": None}, "refusing to print a nil value"),
        ("{{.A}}", {"A": [1, None]}, "refusing to print a nil value"),
        ('{{printf "%d" .A}}', {"A": "x"}, "%d cannot format string"),
        ('{{printf "%s" .A}}', {"A": 1}, "%s needs a string, got int"),
        ('{{printf "%s %s" .A}}', {"A": "x"}, "missing argument for %s"),
        ('{{printf "%s" .A .A}}', {"A": "x"}, "1 argument(s) left over"),
        ('{{printf "%s %"  .A}}', {"A": "x"}, "format ends with a bare %"),
        ("{{printf .A}}", {"A": 1}, "printf format must be a string"),
        ("{{index .L 5}}", {"L": [1]}, "index out of range: 5"),
        ('{{index .M "k"}}', {"M": {}}, "map has no entry for key k"),
        ("{{index .S 0}}", {"S": "abc"}, "can't index item of type string"),
        ("{{eq .A 1}}", {"A": "1"}, "incompatible types for comparison"),
        ("{{eq .A .A}}", {"A": [1]}, "non-comparable type"),
        ("{{lt .A .B}}", {"A": True, "B": False}, "invalid type for comparison: bool"),
        ("{{len .A}}", {"A": 3}, "len of type int"),
        ("{{range .A}}{{end}}", {"A": "abc"}, "range can't iterate over string"),
        ("{{range .A}}{{end}}", {"A": 3}, "range can't iterate over int"),
        ("{{.A}}", {"A": {1, 2}}, "cannot print a value of type set"),
        ("{{if .A}}{{end}}", {"A": object()}, "unsupported value of type object"),
    ],
)
def test_render_errors(text, args, message):
    with pytest.raises(TemplateRenderError) as caught:
        render(text, args, name="sidecar")
    assert message in str(caught.value)
    assert str(caught.value).startswith("template: sidecar:1:")
    assert caught.value.line == 1


def test_recursive_arguments_are_refused_not_crashed():
    loop: list = []
    loop.append(loop)
    with pytest.raises(TemplateRenderError, match="nested too deeply"):
        render("{{.L}}", {"L": loop})
    with pytest.raises(ArgumentError, match="nested too deeply"):
        check_yaml_safe_arguments({"L": loop}, "t")


def test_runaway_loops_end_with_an_error(monkeypatch):
    # Ranges nested over the same list multiply: 10**8 iterations without the bound.
    template = Template.parse("{{range $.L}}" * 8 + "x" + "{{end}}" * 8, "t")
    monkeypatch.setattr(gotemplate_exec, "MAX_STEPS", 1000)
    with pytest.raises(TemplateRenderError, match="more than 1000 actions and loop iterations"):
        template.render({"L": list(range(10))})
    # A long but honest range stays well inside the real bound.
    monkeypatch.undo()
    honest = Template.parse("{{range .L}}- {{.}}\n{{end}}", "t").render({"L": list(range(5000))})
    assert honest.count("\n") == 5000


def test_huge_output_ends_with_an_error():
    template = Template.parse('{{range .L}}{{printf "%10000d" 1}}{{end}}', "t")
    with pytest.raises(TemplateRenderError, match="output longer than 4194304 characters"):
        template.render({"L": list(range(1000))})
    assert len(template.render({"L": list(range(100))})) == 1_000_000


def test_error_classes():
    assert issubclass(TemplateError, ValueError)
    for cls in (TemplateSyntaxError, TemplateRenderError, ArgumentError):
        assert issubclass(cls, TemplateError)
    assert issubclass(ArgumentError, TemplateRenderError)


# ------------------------------------------------------------------------ YAML safety


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("/data\nevil: true", "line break"),
        ("/data\r", "line break"),
        ("/data\u2028x", "line break"),
        ("a: b", '": "'),
        ("tikv:", '": "'),
        ('"quoted"', "quote"),
        ("it's", "quote"),
        ("/data #comment", "comment"),
        ("{a}", "flow"),
        ("[a]", "flow"),
        ("a,b", "flow"),
        ("- item", "indicator"),
        ("*alias", "indicator"),
        ("&anchor", "indicator"),
        ("!!int", "indicator"),
        ("|", "indicator"),
        (">", "indicator"),
        ("%TAG", "indicator"),
        ("@x", "indicator"),
        ("`x", "indicator"),
        ("#x", "indicator"),
        ("<<", "indicator"),
        ("...", "document end"),
        ("a\\", "backslash"),
        (" tikv", "spaces"),
        ("tikv ", "spaces"),
        ("a\tb", "control character"),
        ("a\x00b", "control character"),
    ],
)
def test_yaml_injecting_values_are_refused(value, reason):
    with pytest.raises(ArgumentError) as caught:
        check_yaml_safe_arguments({"DataPath": value}, "chaosfs-sidecar")
    err = caught.value
    assert err.argument == "DataPath"
    assert reason in str(err)
    assert str(err).startswith("template: chaosfs-sidecar: argument DataPath: value ")


def test_yaml_injection_is_refused_by_render_yaml_too():
    template, args, _ = golden("chaosfs-sidecar")
    with pytest.raises(ArgumentError, match="DataPath"):
        template.render_yaml({**args, "DataPath": "/data\nevil: true"})


@pytest.mark.parametrize(
    "value",
    ["/var/lib/tikv/data", "tikv", "tikv-0", 65534, -1, 0.5, True, False, None, "",
     "addr=:65534", "a:b", "a#b", "pingcap/chaos-fs:v0.9.1", "ünïcödé", "a b"],
)  # fmt: skip
def test_ordinary_values_pass(value):
    check_yaml_safe_arguments({"X": value, "Nested": {"k": [value]}}, "t")


def test_nested_values_and_keys_are_named():
    with pytest.raises(ArgumentError) as caught:
        check_yaml_safe_arguments({"Labels": {"ok": ["fine", "a: b"]}}, "t")
    assert caught.value.argument == "Labels.ok[1]"
    with pytest.raises(ArgumentError) as caught:
        check_yaml_safe_arguments({"Labels": {"a: b": "x"}}, "t")
    assert caught.value.argument == 'Labels["a: b"] (the key)'
    with pytest.raises(ArgumentError, match="must be a mapping"):
        check_yaml_safe_arguments(["x"], "t")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="unsupported value of type bytes"):
        check_yaml_safe_arguments({"B": b"x"}, "t")


def test_render_yaml_refuses_output_that_leaves_its_scalar():
    # Each string is harmless, but the list prints as `[a b]`: a YAML flow sequence.
    template = Template.parse("volumes:\n  name: {{.Names}}\n", "t")
    with pytest.raises(ArgumentError) as caught:
        template.render_yaml({"Names": ["a", "b"]})
    assert (caught.value.line, caught.value.column, caught.value.context) == (2, 11, ".Names")
    assert template.render_yaml({"Names": "a"}) == "volumes:\n  name: a\n"


def test_render_yaml_accepts_quoted_output_and_keys():
    template = Template.parse("{{.K}}:\n  cmd: {{.V | quote}}\n  n: {{.N}}\n", "t")
    out = template.render_yaml({"K": "tikv", "V": "x", "N": 5})
    assert yaml.safe_load(out) == {"tikv": {"cmd": "x", "n": 5}}


def test_render_yaml_reports_invalid_yaml():
    template = Template.parse('a: {{"b"}}\n  - c: [\n', "t")
    with pytest.raises(TemplateRenderError, match="not valid YAML"):
        template.render_yaml({})


def test_quote_output_is_yaml_with_the_same_content():
    nasty = 'a: "b"\n\t#c \\ \x01 é \u2028 \U0001f600'
    out = render("k: {{.V | quote}}", {"V": nasty})
    assert yaml.safe_load(out) == {"k": nasty}


# ---------------------------------------------------------------------------- fuzzing

_PIECES = [
    "{{", "}}", "{{- ", " -}}", "{{/*", "*/}}", " ", "\n", "x", ":", ".", ".A", ".B.C", "$",
    "$x", "$y", ":=", "=", ",", "|", "(", ")", "if", "else", "end", "range", "with", "not",
    "and", "or", "eq", "lt", "len", "index", "print", "printf", "quote", "default", '"%d"',
    '"%v %s"', '"s"', "`r`", "1", "-2", "2.5", "0x1", "true", "nil", "'", '"\\', "\\",
]  # fmt: skip
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["A", "B", "C", "x"]), inner, max_size=3)
    ),
    max_leaves=8,
)
_ARGS = st.dictionaries(st.sampled_from(["A", "B", "C", "x"]), _VALUES, max_size=4)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(st.sampled_from(_PIECES) | st.text(max_size=3), max_size=25), args=_ARGS)
def test_only_template_errors_escape(pieces, args):
    try:
        template = Template.parse("".join(pieces), "fuzz")
    except TemplateSyntaxError as exc:
        assert exc.line is not None and exc.column is not None
        return
    for run in (template.render, template.render_yaml):
        with contextlib.suppress(TemplateError):
            assert isinstance(run(args), str)


@given(text=st.text().filter(lambda s: "{{" not in s))
def test_text_without_actions_is_copied(text):
    assert render(text) == text
