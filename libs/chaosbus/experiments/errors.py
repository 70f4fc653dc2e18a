"""The one error an experiment spec raises: a single line that names the field at fault."""

from __future__ import annotations


class SpecError(ValueError):
    """A manifest is invalid. The message is one line and starts with the field at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")))
