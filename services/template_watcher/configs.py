"""Reading Chaos Mesh's ConfigMaps: templates, injection configs, rendered specs.

Everything here is pure: ConfigMap dicts in, validated values or a
``ConfigError`` with a reason an operator can act on out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from chaosbus.injection import SPEC_FIELDS
from chaosbus.yamlfast import load_strings, safe_load

_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
TEMPLATE_KEY = "data"  # Chaos Mesh v0.9 keeps a template under this key of its ConfigMap


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class InjectionConfig:
    namespace: str
    name: str
    template: str
    selector: dict[str, Any]
    arguments: dict[str, Any]
    source: str  # "<namespace>/<configmap>:<key>"
    revision: str


def template_text(configmap: dict[str, Any]) -> str:
    data = configmap.get("data") or {}
    text = data.get(TEMPLATE_KEY)
    if not isinstance(text, str):
        name = configmap["metadata"]["name"]
        raise ConfigError(f"template ConfigMap {name} has no '{TEMPLATE_KEY}' key")
    return text


def parse_configs(configmap: dict[str, Any]) -> list[InjectionConfig | ConfigError]:
    """Every injection config in a ConfigMap: any key may hold one (Chaos Mesh's format)."""
    meta = configmap["metadata"]
    namespace, cm_name = meta.get("namespace", ""), meta["name"]
    out: list[InjectionConfig | ConfigError] = []
    for key, text in sorted((configmap.get("data") or {}).items()):
        source = f"{namespace}/{cm_name}:{key}"
        try:
            out.append(_parse_config(text, namespace, source, meta.get("resourceVersion", "")))
        except ConfigError as exc:
            out.append(ConfigError(f"{source}: {exc}"))
    return out


def _parse_config(text: Any, namespace: str, source: str, revision: str) -> InjectionConfig:
    if not isinstance(text, str):
        raise ConfigError("value is not a string")
    try:
        doc = safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError("an injection config must be a YAML map")
    unknown = sorted(set(doc) - {"name", "selector", "template", "arguments"})
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(map(str, unknown))}")
    name, template = doc.get("name"), doc.get("template")
    if not isinstance(name, str) or not _DNS_NAME.fullmatch(name):
        raise ConfigError(f"name must be a DNS name, got {name!r}")
    if not isinstance(template, str) or not template:
        raise ConfigError("template must name a template ConfigMap")
    # Chaos Mesh read arguments as strings: "1.0" stays "1.0", "yes" stays "yes".
    arguments = (load_strings(text) or {}).get("arguments") or {}
    if not isinstance(arguments, dict):
        raise ConfigError("arguments must map names to values")
    for key, value in arguments.items():
        if not isinstance(value, str):
            raise ConfigError(f"argument {key} must be a single value, not a list or map")
    selector = doc.get("selector") or {}
    if not isinstance(selector, dict):
        raise ConfigError("selector must be a map")
    labels = selector.get("labelSelectors") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ConfigError("selector.labelSelectors must map label names to strings")
    return InjectionConfig(namespace, name, template, selector, arguments, source, revision)


def validate_spec(rendered: str, template: str) -> dict[str, Any]:
    """Parse a rendered template and check that it is an injectable spec."""
    try:
        spec = safe_load(rendered)
    except yaml.YAMLError as exc:
        raise ConfigError(f"template {template} renders invalid YAML: {exc}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"template {template} must render a YAML map")
    unknown = sorted(set(spec) - set(SPEC_FIELDS))
    if unknown:
        raise ConfigError(f"template {template} renders unknown field(s) {', '.join(unknown)}")
    for field in ("initContainers", "containers"):
        _named_list(spec, field, template, required=("name", "image"))
    _named_list(spec, "volumeMounts", template, required=("name", "mountPath"))
    _named_list(spec, "volumes", template, required=("name",))
    _named_list(spec, "env", template, required=("name",))
    post_start = spec.get("postStart") or {}
    if not isinstance(post_start, dict):
        raise ConfigError(f"template {template}: postStart must map container names to actions")
    for container, action in post_start.items():
        command = action.get("command") if isinstance(action, dict) else None
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(c, str) for c in command)
        ):
            raise ConfigError(
                f"template {template}: postStart.{container}.command must be a list of strings"
            )
    aliases = spec.get("hostAliases") or []
    if not isinstance(aliases, list) or not all(
        isinstance(a, dict) and isinstance(a.get("ip"), str) for a in aliases
    ):
        raise ConfigError(f"template {template}: hostAliases must be a list of {{ip, hostnames}}")
    share = spec.get("shareProcessNamespace")
    if share is not None and not isinstance(share, bool):
        raise ConfigError(f"template {template}: shareProcessNamespace must be true or false")
    return spec


def _named_list(spec: dict[str, Any], field: str, template: str, required: tuple[str, ...]) -> None:
    items = spec.get(field)
    if items is None:
        return
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ConfigError(f"template {template}: {field} must be a list of maps")
    names = []
    for item in items:
        for key in required:
            if not isinstance(item.get(key), str) or not item[key]:
                raise ConfigError(f"template {template}: every entry of {field} needs {key}")
        names.append(item["name"])
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"template {template}: duplicate {field} name(s) {', '.join(duplicates)}")
