"""Kubernetes equality-based label selectors: ``a=b,c!=d,e,!f``."""

from __future__ import annotations

import re
from collections.abc import Mapping

_KEY = re.compile(
    r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
)


class Selector:
    def __init__(self, text: str | None) -> None:
        self.text = (text or "").strip()
        self.requirements: list[tuple[str, str, str]] = []  # (key, op, value)
        for raw in filter(None, (p.strip() for p in self.text.split(","))):
            if "!=" in raw:
                key, value = raw.split("!=", 1)
                op = "!="
            elif "==" in raw:
                key, value = raw.split("==", 1)
                op = "="
            elif "=" in raw:
                key, value = raw.split("=", 1)
                op = "="
            elif raw.startswith("!"):
                key, value, op = raw[1:], "", "!exists"
            else:
                key, value, op = raw, "", "exists"
            key, value = key.strip(), value.strip()
            if not _KEY.fullmatch(key):
                raise ValueError(f"invalid label key {key!r} in selector {self.text!r}")
            self.requirements.append((key, op, value))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        for key, op, value in self.requirements:
            if op == "=" and labels.get(key) != value:
                return False
            if op == "!=" and labels.get(key) == value:
                return False
            if op == "exists" and key not in labels:
                return False
            if op == "!exists" and key in labels:
                return False
        return True

    def __str__(self) -> str:
        return self.text
