"""Template: the public face of the engine, parse once and render many times."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import TemplateRenderError
from .exec import Executor
from .lex import Lexer
from .nodes import Action, Node
from .parse import Parser
from .yamlsafe import check_spans_in_scalars, check_yaml_safe_arguments


class Template:
    """A parsed template. Immutable: render it as often as needed, from any thread."""

    __slots__ = ("_nodes", "name", "text")

    def __init__(self, text: str, name: str, nodes: tuple[Node, ...]) -> None:
        self.text = text
        self.name = name
        self._nodes = nodes

    @classmethod
    def parse(cls, text: str, name: str) -> Template:
        """Parse text; raise TemplateSyntaxError (with name, line, column) if it is bad."""
        tokens = Lexer(text, name).run()
        return cls(text, name, Parser(tokens, text, name).parse())

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
        check_spans_in_scalars(self.text, self.name, text, spans)
        return text

    def _execute(self, data: Any, *, track: bool) -> tuple[str, list[tuple[int, int, Action]]]:
        state = Executor(self.text, self.name, data, track)
        try:
            state.walk(self._nodes, data)
        except RecursionError:
            raise TemplateRenderError("arguments nested too deeply", template=self.name) from None
        return "".join(state.out), state.spans

    def __repr__(self) -> str:
        return f"Template(name={self.name!r})"
