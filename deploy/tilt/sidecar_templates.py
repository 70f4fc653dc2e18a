#!/usr/bin/env python3
"""The sidecar template ConfigMaps of an overlay, naming the images tilt built.

A sidecar template names chaosfs's image (and the scripts image) inside its
text, the YAML string under data.data, where neither kustomize's image
transformer nor tilt's image injection reaches: tilt injects image refs only
into fields that hold an image ref whole. So the Tiltfile deploys the templates
with k8s_custom_deploy(image_deps=[...]): tilt builds the images, then runs this
with the refs it built ($TILT_IMAGE_0, ...), and this rewrites the `image:`
lines of the templates whose repository matches, and applies them.

    sidecar_templates.py render [--overlay DIR | --input FILE] [--image REPO=REF ...]
    sidecar_templates.py apply  [--overlay DIR] [--image REPO=REF ...]
    sidecar_templates.py delete [--overlay DIR]

render prints the templates; apply runs `kubectl apply` and prints what it
applied (tilt reads that); delete removes them. A template whose text changes
is re-rendered by the template-watcher; pods created from then on get the new
images, the running ones keep theirs until they are re-created.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

TEMPLATE_LABEL = ("app.kubernetes.io/component", "template")
DEFAULT_OVERLAY = "deploy/overlays/dev"
# `image: REF` alone on its line, as a map key or as the first key of a list item.
_IMAGE_LINE = re.compile(
    r"^(?P<lead>\s*(?:-\s+)?image:\s*)(?P<q>[\"']?)(?P<ref>[^\s\"'#]+)(?P=q)(?P<tail>\s*(?:#.*)?)$"
)


def repository(ref: str) -> str:
    """The repository of an image ref: without its digest and tag."""
    name = ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def rewrite(text: str, images: Mapping[str, str]) -> str:
    out = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        match = _IMAGE_LINE.match(body)
        if match and repository(match["ref"]) in images:
            new = images[repository(match["ref"])]
            body = f"{match['lead']}{match['q']}{new}{match['q']}{match['tail']}"
            line = body + line[len(line.rstrip("\r\n")) :]
        out.append(line)
    return "".join(out)


def templates(docs: Iterable[Any]) -> list[dict[str, Any]]:
    key, value = TEMPLATE_LABEL
    return [
        d
        for d in docs
        if isinstance(d, dict)
        and d.get("kind") == "ConfigMap"
        and (d.get("metadata") or {}).get("labels", {}).get(key) == value
    ]


def render(docs: Iterable[Any], images: Mapping[str, str]) -> list[dict[str, Any]]:
    out = []
    for cm in templates(docs):
        data = dict(cm.get("data") or {})
        if isinstance(data.get("data"), str):
            data["data"] = rewrite(data["data"], images)
        out.append({**cm, "data": data})
    return out


def _images(pairs: list[str]) -> dict[str, str]:
    images = {}
    for pair in pairs:
        repo, sep, ref = pair.partition("=")
        if not sep or not repo or not ref:
            raise SystemExit(f"sidecar_templates: --image wants REPO=REF, got {pair!r}")
        images[repository(repo)] = ref
    return images


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the templates) as literal blocks, readable in tilt's log."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(docs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def _run(cmd: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"sidecar_templates: {' '.join(cmd)} failed ({done.returncode})")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sidecar_templates.py", description=__doc__.split("\n")[0])
    p.add_argument("action", choices=("render", "apply", "delete"))
    p.add_argument("--overlay", default=DEFAULT_OVERLAY, help="kustomize directory")
    p.add_argument("--input", help="read the built manifests from FILE ('-': stdin)")
    p.add_argument("--image", action="append", default=[], metavar="REPO=REF")
    args = p.parse_args(argv)

    if args.input == "-":
        text = sys.stdin.read()
    elif args.input:
        with open(args.input, encoding="utf-8") as f:
            text = f.read()
    else:
        text = _run(["kubectl", "kustomize", args.overlay])
    docs = render(yaml.safe_load_all(text), _images(args.image))
    if not docs:
        raise SystemExit("sidecar_templates: no template ConfigMap in the manifests")

    if args.action == "render":
        sys.stdout.write(_dump(docs))
    elif args.action == "apply":
        applied = json.loads(_run(["kubectl", "apply", "-o", "json", "-f", "-"], _dump(docs)))
        items = applied.get("items", [applied]) if applied.get("kind") == "List" else [applied]
        sys.stdout.write(_dump(items))
    else:
        _run(["kubectl", "delete", "--ignore-not-found", "-f", "-"], _dump(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
