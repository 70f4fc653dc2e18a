"""A strict renderer for the subset of Go's text/template that sidecar templates use.

Chaos Mesh renders its sidecar template ConfigMaps with Go's template package, so a
user's existing template must render here as it did there. The package follows Go's own
split: ``lex`` (text into tokens), ``parse`` (tokens into a tree of ``nodes``), ``exec``
(tree and arguments into text), ``funcs`` and ``fmt`` (the functions and Go's way of
printing values), ``yamlsafe`` (arguments that must not change the YAML they are pasted
into), and ``limits`` (bounds against hostile templates). docs/gotemplate.md compares
every construct with Go's behaviour; tests/unit/gotemplate_fixtures holds outputs
produced by real Go.

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

from .errors import ArgumentError, TemplateError, TemplateRenderError, TemplateSyntaxError
from .template import Template
from .yamlsafe import check_yaml_safe_arguments

__all__ = [
    "ArgumentError",
    "Template",
    "TemplateError",
    "TemplateRenderError",
    "TemplateSyntaxError",
    "check_yaml_safe_arguments",
]
