"""Stubs of tilt's Tiltfile API, to run a Tiltfile under starlark-go in tests.

Tilt is a Go program that embeds starlark-go; these stubs stand in for the
builtins it adds. Each one takes the parameters tilt's takes (an unknown
keyword fails the run, as in tilt), checks their types and the rules tilt
enforces when it loads a Tiltfile (paths that exist, live_update step order,
object selectors that match exactly one object, ...), and records the call.
``TiltRun.finish`` then checks the whole as tilt assembles it: every built image
deployed by something, every resource dependency a resource, every
``k8s_resource`` naming a workload. Only the API the chaosbus Tiltfile uses is
here: any other name fails the run, which is the point when the stubs fall
behind the Tiltfile.

Values tilt keeps opaque (Blob, live_update steps, port forwards, trigger
modes) are dicts tagged with ``__tilt__``; a Tiltfile that does not look inside
them cannot tell.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TAG = "__tilt__"
WORKLOAD_KINDS = {
    "deployment",
    "statefulset",
    "daemonset",
    "replicaset",
    "replicationcontroller",
    "job",
    "cronjob",
    "pod",
}
_LABEL = re.compile(r"[A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?")
_IMAGE_REF = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")
_LOAD = re.compile(
    r"""^load\(\s*(['"])(?P<module>[^'"]+)\1(?P<names>(?:\s*,\s*['"][^'"]+['"])+)\s*\)\s*$"""
)
_RESTART_CHILD = """
FROM {base}
RUN ["touch", "{restart_file}"]
COPY --from=tiltdev/restart-helper /tilt-restart-wrapper /
COPY --from=tiltdev/restart-helper /entr /
"""


class TiltfileError(ValueError):
    """What tilt would refuse; raised inside a builtin, it fails the run."""


def _tagged(kind: str, **values: Any) -> dict[str, Any]:
    return {TAG: kind, **values}


def _is(value: Any, kind: str) -> bool:
    return isinstance(value, dict) and value.get(TAG) == kind


def _str_or_list(fn: str, param: str, value: Any, *, allow_empty: bool = True) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise TiltfileError(f"{fn}: {param} must be a string or a list of strings, got {value!r}")
    items = [i for i in items if i != ""]
    if not items and not allow_empty:
        raise TiltfileError(f"{fn}: {param} must not be empty")
    return list(items)


def _expect(fn: str, param: str, value: Any, *types: type) -> None:
    if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
        names = " or ".join(t.__name__ for t in types)
        raise TiltfileError(f"{fn}: {param} must be {names}, got {value!r}")


def _labels(fn: str, value: Any) -> list[str]:
    labels = _str_or_list(fn, "labels", value)
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise TiltfileError(f"{fn}: label {label!r} is not a valid resource label")
    return labels


def _trigger_mode(fn: str, value: Any) -> str:
    if not _is(value, "trigger_mode"):
        raise TiltfileError(f"{fn}: trigger_mode must be TRIGGER_MODE_AUTO or TRIGGER_MODE_MANUAL")
    return value["mode"]


def repository(ref: str) -> str:
    """An image ref without its tag and digest: what tilt matches images by."""
    name = ref.split("@", 1)[0]
    slash, colon = name.rfind("/"), name.rfind(":")
    return name[:colon] if colon > slash else name


@dataclass
class Image:
    ref: str
    context: Path
    dockerfile: Path | None
    dockerfile_contents: str
    live_update: list[dict[str, Any]]
    only: list[str]
    build_args: dict[str, str]
    entrypoint: list[str] | str
    restart_file: str | None = None  # set by docker_build_with_restart


@dataclass
class Resource:
    name: str
    kind: str  # "k8s", "custom", "local"
    objects: list[dict[str, Any]] = field(default_factory=list)
    resource_deps: list[str] = field(default_factory=list)
    port_forwards: list[dict[str, Any]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    auto_init: bool = True
    trigger_mode: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)


class TiltRun:
    """One run of a Tiltfile against the stubs."""

    def __init__(self, root: Path, *, kustomize: Callable[[Path], str] | None = None) -> None:
        self.root = root
        self._kustomize = kustomize or _kubectl_kustomize
        self.images: dict[str, Image] = {}
        self.objects: list[dict[str, Any]] = []
        self.yaml_sources: list[str] = []  # what went to k8s_yaml: paths, or blob origins
        self.kustomized: list[str] = []
        self.custom_deploys: dict[str, dict[str, Any]] = {}
        self.local_resources: dict[str, Resource] = {}
        self.k8s_resource_calls: list[dict[str, Any]] = []
        self.local_calls: list[str] = []
        self.printed: list[str] = []
        self.resources: dict[str, Resource] = {}

    # --- running ------------------------------------------------------------------

    def builtins(self) -> dict[str, Any]:
        return {
            "__file__": str(self.root / "Tiltfile"),
            "TRIGGER_MODE_AUTO": _tagged("trigger_mode", mode="auto"),
            "TRIGGER_MODE_MANUAL": _tagged("trigger_mode", mode="manual"),
            "docker_build": self.docker_build,
            "k8s_yaml": self.k8s_yaml,
            "kustomize": self.kustomize,
            "filter_yaml": self.filter_yaml,
            "k8s_resource": self.k8s_resource,
            "k8s_custom_deploy": self.k8s_custom_deploy,
            "local_resource": self.local_resource,
            "port_forward": port_forward,
            "link": link,
            "sync": sync,
            "run": run,
            "fall_back_on": fall_back_on,
            "local": self.local,
            "allow_k8s_contexts": lambda contexts: None,
            "update_settings": update_settings,
        }

    def extensions(self) -> dict[str, dict[str, Callable[..., Any]]]:
        return {
            "ext://restart_process": {"docker_build_with_restart": self.docker_build_with_restart}
        }

    def execute(self, path: Path) -> TiltRun:
        import starlark_go

        # Tilt's dialect: top-level if/for, global reassignment, sets, recursion.
        starlark_go.configure_starlark(
            allow_set=True, allow_global_reassign=True, allow_recursion=True
        )
        globals_ = self.builtins()
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if not line.startswith("load("):
                continue
            match = _LOAD.match(line)
            if match is None:
                raise TiltfileError(f"{path.name}:{number + 1}: the stubs read one-line loads only")
            module = self.extensions().get(match["module"])
            if module is None:
                raise TiltfileError(f"{path.name}:{number + 1}: no stub for {match['module']}")
            for name in re.findall(r"""['"]([^'"]+)['"]""", match["names"]):
                if name not in module:
                    raise TiltfileError(f"{match['module']} has no {name}")
                globals_[name] = module[name]
            lines[number] = ""  # keep the line numbers of errors
        interpreter = starlark_go.Starlark(globals=globals_, print=self.printed.append)
        interpreter.exec("\n".join(lines) + "\n", filename=path.name)
        self.finish()
        return self

    # --- images ---------------------------------------------------------------------

    def docker_build(
        self,
        ref,
        context,
        build_args={},  # noqa: B006 - tilt's signature; never mutated
        dockerfile="Dockerfile",
        dockerfile_contents="",
        live_update=[],  # noqa: B006
        match_in_env_vars=False,
        ignore=[],  # noqa: B006
        only=[],  # noqa: B006
        entrypoint=[],  # noqa: B006
        target="",
        ssh="",
        network="",
        secret="",
        extra_tag="",
        container_args=None,
        cache_from=[],  # noqa: B006
        pull=False,
        platform="",
    ):
        fn = "docker_build"
        _expect(fn, "ref", ref, str)
        if not _IMAGE_REF.fullmatch(repository(ref)):
            raise TiltfileError(f"{fn}: {ref!r} is not an image ref")
        if ref in self.images:
            raise TiltfileError(f"{fn}: image {ref!r} is already built by another docker_build")
        _expect(fn, "context", context, str)
        ctx = self.root / context
        if not ctx.is_dir():
            raise TiltfileError(f"{fn}: context {context!r} is not a directory")
        _expect(fn, "build_args", build_args, dict)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in build_args.items()):
            raise TiltfileError(f"{fn}: build_args must map strings to strings")
        _expect(fn, "dockerfile", dockerfile, str)
        if _is(dockerfile_contents, "blob"):
            dockerfile_contents = dockerfile_contents["text"]
        _expect(fn, "dockerfile_contents", dockerfile_contents, str)
        path: Path | None = None
        if dockerfile_contents:
            if dockerfile != "Dockerfile":
                raise TiltfileError(f"{fn}: cannot use both dockerfile and dockerfile_contents")
        else:
            path = self.root / dockerfile
            if not path.is_file():
                raise TiltfileError(f"{fn}: no Dockerfile at {dockerfile!r}")
        only_paths = _str_or_list(fn, "only", only)
        for item in only_paths:
            if not (ctx / item).exists():
                raise TiltfileError(f"{fn}: only names {item!r}, which is not in the context")
        _str_or_list(fn, "ignore", ignore)
        _expect(fn, "entrypoint", entrypoint, str, list)
        for flag, value in (("match_in_env_vars", match_in_env_vars), ("pull", pull)):
            _expect(fn, flag, value, bool)
        steps = self._live_update(fn, live_update, ctx, only_paths)
        self.images[ref] = Image(
            ref=ref,
            context=ctx,
            dockerfile=path,
            dockerfile_contents=dockerfile_contents,
            live_update=steps,
            only=only_paths,
            build_args=dict(build_args),
            entrypoint=entrypoint,
        )

    def docker_build_with_restart(
        self,
        ref,
        context,
        entrypoint,
        live_update,
        base_suffix="-base",
        restart_file="/.restart-proc",
        **kwargs,
    ):
        """ext://restart_process: a base image as given, and a child image that
        adds tilt's restart wrapper, runs ``entrypoint`` under it, and gets a last
        live_update step that touches ``restart_file``."""
        fn = "docker_build_with_restart"
        if not live_update:
            raise TiltfileError(f"{fn} requires at least one live_update step")
        if isinstance(entrypoint, str):
            wrapped = [
                "/tilt-restart-wrapper",
                f"--watch_file={restart_file}",
                "sh",
                "-c",
                entrypoint,
            ]
        elif (
            isinstance(entrypoint, list)
            and entrypoint
            and all(isinstance(e, str) for e in entrypoint)
        ):
            wrapped = ["/tilt-restart-wrapper", f"--watch_file={restart_file}", *entrypoint]
        else:
            raise TiltfileError(f"{fn}: entrypoint must be a string or a list of strings")
        _expect(fn, "restart_file", restart_file, str)
        if not restart_file.startswith("/"):
            raise TiltfileError(f"{fn}: restart_file must be absolute")
        base = ref + base_suffix
        self.docker_build(base, context, **kwargs)
        child = {
            k: v
            for k, v in kwargs.items()
            if k not in ("dockerfile", "dockerfile_contents", "target")
        }
        self.docker_build(
            ref,
            context,
            entrypoint=wrapped,
            dockerfile_contents=_RESTART_CHILD.format(base=base, restart_file=restart_file),
            live_update=[*live_update, run(f"date > {restart_file}")],
            **child,
        )
        self.images[ref].restart_file = restart_file

    def _live_update(self, fn: str, steps: Any, ctx: Path, only: list[str]) -> list[dict[str, Any]]:
        if not isinstance(steps, list):
            raise TiltfileError(f"{fn}: live_update must be a list of steps")
        order = {"fall_back_on": 0, "sync": 1, "run": 2}
        last = 0
        for step in steps:
            kind = step.get(TAG) if isinstance(step, dict) else None
            if kind not in order:
                raise TiltfileError(f"{fn}: {step!r} is not a live_update step")
            if order[kind] < last:
                raise TiltfileError(
                    f"{fn}: live_update steps go fall_back_on, then sync, then run; "
                    f"{kind} comes too late"
                )
            last = order[kind]
            paths = step["files"] if kind == "fall_back_on" else [step.get("local", "")]
            if kind == "run":
                paths = []
            for local in paths:
                target = (self.root / local).resolve()
                if not target.exists():
                    raise TiltfileError(f"{fn}: {kind} names {local!r}, which does not exist")
                if ctx.resolve() not in (target, *target.parents):
                    raise TiltfileError(f"{fn}: {kind} path {local!r} is outside the context")
                if only and not any((ctx / o).resolve() in (target, *target.parents) for o in only):
                    raise TiltfileError(f"{fn}: {kind} path {local!r} is left out by only=")
        return list(steps)

    # --- manifests ------------------------------------------------------------------

    def kustomize(self, pathToDir, kustomize_bin=None, flags=[]):  # noqa: B006
        fn = "kustomize"
        _expect(fn, "pathToDir", pathToDir, str)
        directory = self.root / pathToDir
        if not any(
            (directory / n).is_file()
            for n in ("kustomization.yaml", "kustomization.yml", "Kustomization")
        ):
            raise TiltfileError(f"{fn}: {pathToDir!r} holds no kustomization")
        _str_or_list(fn, "flags", flags)
        self.kustomized.append(pathToDir)
        return _tagged("blob", text=self._kustomize(directory), origin=f"kustomize:{pathToDir}")

    def filter_yaml(
        self, yaml, labels=None, name=None, namespace=None, kind=None, api_version=None
    ):
        fn = "filter_yaml"
        docs, origin = self._docs(fn, yaml)
        if labels is not None:
            _expect(fn, "labels", labels, dict)
        for param, value in (
            ("name", name),
            ("namespace", namespace),
            ("kind", kind),
            ("api_version", api_version),
        ):
            if value is not None:
                _expect(fn, param, value, str)

        def matches(doc: dict[str, Any]) -> bool:
            meta = doc.get("metadata") or {}
            if labels and any((meta.get("labels") or {}).get(k) != v for k, v in labels.items()):
                return False
            for pattern, actual in (
                (name, meta.get("name", "")),
                (namespace, meta.get("namespace", "")),
                (kind, doc.get("kind", "")),
                (api_version, doc.get("apiVersion", "")),
            ):
                if pattern is not None and not re.search(pattern, actual, re.IGNORECASE):
                    return False
            return True

        hit = [d for d in docs if matches(d)]
        rest = [d for d in docs if not matches(d)]
        return (
            _tagged("blob", text=yaml_dump(hit), origin=f"{origin}|filter_yaml(match)"),
            _tagged("blob", text=yaml_dump(rest), origin=f"{origin}|filter_yaml(rest)"),
        )

    def _docs(self, fn: str, value: Any) -> tuple[list[dict[str, Any]], str]:
        if _is(value, "blob"):
            return _load(value["text"]), value.get("origin", "blob")
        if isinstance(value, str):
            path = self.root / value
            if not path.is_file():
                raise TiltfileError(f"{fn}: no YAML file {value!r} (YAML text must be a Blob)")
            return _load(path.read_text(encoding="utf-8")), value
        if isinstance(value, list):
            docs, origins = [], []
            for item in value:
                d, o = self._docs(fn, item)
                docs += d
                origins.append(o)
            return docs, ",".join(origins)
        raise TiltfileError(f"{fn}: expected a path, a Blob or a list of them, got {value!r}")

    def k8s_yaml(self, yaml, allow_duplicates=False):
        fn = "k8s_yaml"
        docs, origin = self._docs(fn, yaml)
        _expect(fn, "allow_duplicates", allow_duplicates, bool)
        seen = {_object_id(o) for o in self.objects}
        for doc in docs:
            if _object_id(doc) in seen and not allow_duplicates:
                raise TiltfileError(f"{fn}: {_object_id(doc)} is applied twice")
        self.objects += docs
        self.yaml_sources.append(origin)

    # --- resources ------------------------------------------------------------------

    def k8s_resource(
        self,
        workload="",
        new_name="",
        port_forwards=[],  # noqa: B006
        extra_pod_selectors=[],  # noqa: B006
        trigger_mode=None,
        resource_deps=[],  # noqa: B006
        objects=[],  # noqa: B006
        auto_init=True,
        pod_readiness="",
        links=[],  # noqa: B006
        labels=[],  # noqa: B006
        discovery_strategy="",
    ):
        fn = "k8s_resource"
        _expect(fn, "workload", workload, str)
        _expect(fn, "new_name", new_name, str)
        if not workload and not (new_name and objects):
            raise TiltfileError(f"{fn}: give a workload, or new_name and objects")
        self.k8s_resource_calls.append(
            {
                "workload": workload,
                "new_name": new_name,
                "port_forwards": _port_forwards(fn, port_forwards),
                "trigger_mode": _trigger_mode(fn, trigger_mode)
                if trigger_mode is not None
                else None,
                "resource_deps": _str_or_list(fn, "resource_deps", resource_deps),
                "objects": _str_or_list(fn, "objects", objects),
                "auto_init": _bool(fn, "auto_init", auto_init),
                "labels": _labels(fn, labels),
                "pod_readiness": pod_readiness,
            }
        )
        if pod_readiness not in ("", "ignore", "wait"):
            raise TiltfileError(f"{fn}: pod_readiness must be '', 'ignore' or 'wait'")

    def k8s_custom_deploy(
        self,
        name,
        apply_cmd,
        delete_cmd,
        deps,
        image_selector="",
        live_update=[],  # noqa: B006
        apply_dir="",
        apply_env={},  # noqa: B006
        apply_cmd_bat="",
        delete_dir="",
        delete_env={},  # noqa: B006
        delete_cmd_bat="",
        container_selector="",
        image_deps=[],  # noqa: B006
    ):
        fn = "k8s_custom_deploy"
        _expect(fn, "name", name, str)
        self._new_resource_name(fn, name)
        apply = _str_or_list(fn, "apply_cmd", apply_cmd, allow_empty=False)
        delete = _str_or_list(fn, "delete_cmd", delete_cmd, allow_empty=False)
        for dep in _str_or_list(fn, "deps", deps):
            if not (self.root / dep).exists():
                raise TiltfileError(f"{fn}: dep {dep!r} does not exist")
        images = _str_or_list(fn, "image_deps", image_deps)
        if live_update and bool(image_selector) == bool(container_selector):
            raise TiltfileError(
                f"{fn}: live_update needs exactly one of image_selector, container_selector"
            )
        for i in range(len(images)):
            if not any(f"TILT_IMAGE_{i}" in c for c in apply):
                raise TiltfileError(
                    f"{fn}: image_deps[{i}] is built but apply_cmd never reads $TILT_IMAGE_{i}"
                )
        self.custom_deploys[name] = {
            "apply_cmd": apply,
            "delete_cmd": delete,
            "image_deps": images,
            "deps": _str_or_list(fn, "deps", deps),
        }

    def local_resource(
        self,
        name,
        cmd="",
        deps=None,
        trigger_mode=None,
        resource_deps=[],  # noqa: B006
        ignore=[],  # noqa: B006
        auto_init=True,
        serve_cmd="",
        cmd_bat="",
        serve_cmd_bat="",
        allow_parallel=False,
        links=[],  # noqa: B006
        tags=[],  # noqa: B006
        env={},  # noqa: B006
        serve_env={},  # noqa: B006
        readiness_probe=None,
        dir="",
        serve_dir="",
        labels=[],  # noqa: B006
    ):
        fn = "local_resource"
        _expect(fn, "name", name, str)
        self._new_resource_name(fn, name)
        command = _str_or_list(fn, "cmd", cmd)
        serve = _str_or_list(fn, "serve_cmd", serve_cmd)
        if not command and not serve:
            raise TiltfileError(f"{fn}: {name} needs a cmd or a serve_cmd")
        for dep in _str_or_list(fn, "deps", deps or []):
            if not (self.root / dep).exists():
                raise TiltfileError(f"{fn}: dep {dep!r} does not exist")
        self.local_resources[name] = Resource(
            name=name,
            kind="local",
            resource_deps=_str_or_list(fn, "resource_deps", resource_deps),
            labels=_labels(fn, labels),
            auto_init=_bool(fn, "auto_init", auto_init),
            trigger_mode=_trigger_mode(fn, trigger_mode) if trigger_mode is not None else "auto",
            options={"cmd": " ".join(command), "serve_cmd": " ".join(serve), "deps": deps},
        )

    def _new_resource_name(self, fn: str, name: str) -> None:
        if not name or name in self.local_resources or name in self.custom_deploys:
            raise TiltfileError(f"{fn}: resource name {name!r} is empty or taken")

    def local(
        self,
        command,
        quiet=False,
        command_bat="",
        echo_off=False,
        env={},  # noqa: B006
        dir="",
        stdin=None,
    ):
        self.local_calls.append(" ".join(_str_or_list("local", "command", command)))
        return _tagged("blob", text="", origin="local")

    # --- assembling -----------------------------------------------------------------

    def finish(self) -> None:
        """Assemble the resources as tilt does after the Tiltfile ran, and check them."""
        workloads: dict[str, Resource] = {}
        names = [o["metadata"]["name"] for o in self.objects if o["kind"].lower() in WORKLOAD_KINDS]
        for obj in self.objects:
            if obj["kind"].lower() not in WORKLOAD_KINDS:
                continue
            name = obj["metadata"]["name"]
            if names.count(name) > 1:
                name = f"{name}:{obj['kind'].lower()}"
            workloads[name] = Resource(name=name, kind="k8s", objects=[obj])
        # Services go with the workloads whose pods they select.
        claimed = {id(r.objects[0]) for r in workloads.values()}
        for obj in self.objects:
            if obj["kind"] != "Service":
                continue
            selector = (obj.get("spec") or {}).get("selector") or {}
            for resource in workloads.values():
                pod_labels = _pod_labels(resource.objects[0])
                if (
                    selector
                    and _namespace(obj) == _namespace(resource.objects[0])
                    and all(pod_labels.get(k) == v for k, v in selector.items())
                ):
                    resource.objects.append(obj)
                    claimed.add(id(obj))
                    break
        resources: dict[str, Resource] = dict(workloads)
        for name, custom in self.custom_deploys.items():
            resources[name] = Resource(name=name, kind="custom", options=custom)
        for call in self.k8s_resource_calls:
            if call["workload"]:
                if call["workload"] not in resources:
                    raise TiltfileError(
                        f"k8s_resource: no workload {call['workload']!r} "
                        f"(workloads: {sorted(workloads)})"
                    )
                resource = resources[call["workload"]]
                if call["new_name"]:
                    del resources[resource.name]
                    resource.name = call["new_name"]
                    resources[resource.name] = resource
            else:
                if call["new_name"] in resources:
                    raise TiltfileError(
                        f"k8s_resource: resource {call['new_name']!r} exists already"
                    )
                resource = Resource(name=call["new_name"], kind="k8s")
                resources[resource.name] = resource
            for selector in call["objects"]:
                obj = self._select(selector, claimed)
                claimed.add(id(obj))
                resource.objects.append(obj)
            resource.port_forwards += call["port_forwards"]
            resource.resource_deps += call["resource_deps"]
            resource.labels += call["labels"]
            resource.auto_init = call["auto_init"]
            if call["trigger_mode"]:
                resource.trigger_mode = call["trigger_mode"]
        rest = [o for o in self.objects if id(o) not in claimed]
        if rest:
            resources["uncategorized"] = Resource(name="uncategorized", kind="k8s", objects=rest)
        for name, resource in self.local_resources.items():
            if name in resources:
                raise TiltfileError(f"local_resource: {name!r} is also a k8s resource")
            resources[name] = resource
        for resource in resources.values():
            for dep in resource.resource_deps:
                if dep not in resources:
                    raise TiltfileError(
                        f"{resource.name}: resource_deps names {dep!r}, no resource"
                    )
        _no_cycles(resources)
        self.resources = resources
        self._check_images()

    def _select(self, selector: str, claimed: set[int]) -> dict[str, Any]:
        parts = selector.split(":")
        if not 1 <= len(parts) <= 3:
            raise TiltfileError(f"k8s_resource: bad object selector {selector!r}")
        name, kind, namespace = [*parts, "", ""][:3]
        hits = [
            o
            for o in self.objects
            if o["metadata"]["name"].lower() == name.lower()
            and (not kind or o["kind"].lower() == kind.lower())
            and (not namespace or _namespace(o).lower() == namespace.lower())
        ]
        if len(hits) != 1:
            raise TiltfileError(
                f"k8s_resource: object selector {selector!r} matches {len(hits)} objects"
            )
        if id(hits[0]) in claimed:
            raise TiltfileError(f"k8s_resource: {selector!r} already belongs to a resource")
        return hits[0]

    def _check_images(self) -> None:
        used: set[str] = set()
        for obj in self.objects:
            for container in pod_containers(obj):
                used.add(repository(container.get("image", "")))
        for custom in self.custom_deploys.values():
            for ref in custom["image_deps"]:
                if ref not in self.images:
                    raise TiltfileError(
                        f"k8s_custom_deploy: image_deps names {ref!r}, which nothing builds"
                    )
                used.add(repository(ref))
        for image in self.images.values():
            for line in image.dockerfile_contents.splitlines():
                if line.strip().upper().startswith("FROM "):
                    used.add(repository(line.split()[1]))
        for ref in self.images:
            if repository(ref) not in used:
                raise TiltfileError(f"docker_build: {ref!r} is built but nothing deploys it")


# --- stateless builtins ---------------------------------------------------------------


def sync(local_path, remote_path):
    _expect("sync", "local_path", local_path, str)
    _expect("sync", "remote_path", remote_path, str)
    if not remote_path.startswith("/"):
        raise TiltfileError(f"sync: remote_path must be absolute, got {remote_path!r}")
    return _tagged("sync", local=local_path, remote=remote_path)


def run(cmd, trigger=[], echo_off=False):  # noqa: B006
    command = _str_or_list("run", "cmd", cmd, allow_empty=False)
    return _tagged("run", cmd=command, trigger=_str_or_list("run", "trigger", trigger))


def fall_back_on(files):
    return _tagged(
        "fall_back_on", files=_str_or_list("fall_back_on", "files", files, allow_empty=False)
    )


def port_forward(local_port, container_port=None, name=None, link_path=None, host=None):
    fn = "port_forward"
    _expect(fn, "local_port", local_port, int)
    if container_port is not None:
        _expect(fn, "container_port", container_port, int)
    for param, value in (("name", name), ("link_path", link_path), ("host", host)):
        if value is not None:
            _expect(fn, param, value, str)
    for port in (local_port, container_port):
        if port is not None and not 0 < port < 65536:
            raise TiltfileError(f"{fn}: {port} is not a port")
    return _tagged(
        "port_forward",
        local=local_port,
        container=container_port or local_port,
        name=name,
        link_path=link_path,
    )


def link(url, name=None):
    _expect("link", "url", url, str)
    return _tagged("link", url=url, name=name)


def update_settings(
    max_parallel_updates=3, k8s_upsert_timeout_secs=30, suppress_unused_image_warnings=None
):
    _expect("update_settings", "max_parallel_updates", max_parallel_updates, int)
    _expect("update_settings", "k8s_upsert_timeout_secs", k8s_upsert_timeout_secs, int)


def _port_forwards(fn: str, value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            out.append(port_forward(item))
        elif isinstance(item, str):
            parts = item.split(":")
            if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts[-2:]):
                raise TiltfileError(f"{fn}: bad port forward {item!r}")
            local = int(parts[-2] if len(parts) > 1 else parts[0])
            out.append(port_forward(local, int(parts[-1])))
        elif _is(item, "port_forward"):
            out.append(item)
        else:
            raise TiltfileError(
                f"{fn}: port_forwards takes ports, 'LOCAL:REMOTE' or port_forward()"
            )
    return out


def _bool(fn: str, param: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TiltfileError(f"{fn}: {param} must be True or False")
    return value


def _no_cycles(resources: dict[str, Resource]) -> None:
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise TiltfileError(f"resource_deps cycle: {' -> '.join([*path, name])}")
        state[name] = 1
        for dep in resources[name].resource_deps:
            visit(dep, [*path, name])
        state[name] = 2

    for name in resources:
        visit(name, [])


# --- manifests ------------------------------------------------------------------------


def _kubectl_kustomize(directory: Path) -> str:
    done = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise TiltfileError(f"kustomize {directory}: {done.stderr.strip()}")
    return done.stdout


def _load(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def yaml_dump(docs: Iterable[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)


def _namespace(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("namespace") or ""


def _object_id(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{_namespace(obj)}/{obj['metadata']['name']}"


def _pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "Pod":
        return obj["metadata"].get("labels") or {}
    spec = obj.get("spec") or {}
    if obj["kind"] == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}


def pod_containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers and init containers of a workload's pods."""
    if obj.get("kind", "").lower() not in WORKLOAD_KINDS:
        return []
    spec = obj.get("spec") or {}
    if obj["kind"] == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    pod = spec if obj["kind"] == "Pod" else (spec.get("template") or {}).get("spec") or {}
    return [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]
