"""The errors a template can raise, worded like Go's so that users recognise them."""

from __future__ import annotations

from typing import Any


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


class Fail(Exception):
    """Raised by value helpers; the evaluator adds the template location."""


def line_col(text: str, pos: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, pos) + 1
    return text.count("\n", 0, pos) + 1, pos - line_start + 1
