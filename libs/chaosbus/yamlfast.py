"""PyYAML with its C loaders when the wheel has them: about five times faster, and
the template-watcher re-reads every config on each change."""

from __future__ import annotations

from typing import Any

import yaml

SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
BaseLoader: Any = getattr(yaml, "CBaseLoader", yaml.BaseLoader)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=SafeLoader)


def safe_load_all(text: str) -> list[Any]:
    return list(yaml.load_all(text, Loader=SafeLoader))


def load_strings(text: str) -> Any:
    """Every scalar as the string it was written as (what Chaos Mesh's Go code saw)."""
    return yaml.load(text, Loader=BaseLoader)
