"""The mutation: a pure function from a pod and a rendering to a JSON patch.

Chaos Mesh patched pods piecemeal (``add /spec/containers/-`` per container,
mounts rebuilt from a Go map in random order, ``replace`` on paths that may not
exist). Here the whole new pod is computed first and the patch then replaces or
adds each changed top-level field as a whole, which is simple to reason about
and exact: applying the patch to the pod the webhook saw yields the computed pod.

The rules, beyond the seed's:

* injected containers and init containers get the spec's ``env`` and
  ``volumeMounts`` they lack (by name); one of the same name already in the pod
  is replaced in place (that is what makes a second mutation a no-op);
* every existing app container gets the spec's ``volumeMounts``: a mount of the
  same volume name is replaced by the spec's, a mount at one of the spec's paths
  under another name is dropped (two mounts at one path is an invalid pod), and
  every other mount stays; a dropped mount that the app could have used is
  reported as a warning;
* ``volumes`` are replaced by name or appended, ``hostAliases`` merged by IP
  without duplicate hostnames, ``shareProcessNamespace`` set when the spec asks;
* ``postStart`` makes the named container run the command before its own, see
  :func:`wrap_command`.

Anything the function cannot make sense of raises :class:`MutationError`; the
caller then admits the pod unchanged.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chaosbus.injection import Rendering

STATUS_INJECTED = "injected"
SHELL = "/bin/sh"
# $0 of the wrapping shell; also how a wrapped command is recognised, so that
# a second mutation re-wraps the original command instead of nesting wrappers.
POSTSTART_MARKER = "chaosbus-poststart"

Json = dict[str, Any]


class MutationError(ValueError):
    """The pod or the rendering cannot be mutated; the pod goes through unchanged."""


@dataclass(frozen=True)
class Mutation:
    patch: list[Json]
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.patch)


def status_key(prefix: str) -> str:
    return f"{prefix}/status"


def escape_pointer(token: str) -> str:
    """RFC 6901: ``~`` first, so that the ``~1`` written for ``/`` stays intact."""
    return token.replace("~", "~0").replace("/", "~1")


def wrap_command(before: list[str], command: list[str]) -> list[str]:
    """Run ``before``, then exec the container's own command.

    ``sh -c SCRIPT NAME ARG...`` sets ``$0`` to NAME and ``$@`` to the ARGs;
    the original command becomes the first ARGs and the kubelet appends the
    container's ``args`` after them, so ``exec "$@"`` runs exactly what the
    container would have run, with every argument intact (no re-splitting).
    """
    script = f'{shlex.join(before)} && exec "$@"'
    return [SHELL, "-c", script, POSTSTART_MARKER, *command]


def unwrap_command(command: list[str]) -> list[str]:
    """The original command of one made by :func:`wrap_command`, else itself."""
    if len(command) >= 4 and command[:2] == [SHELL, "-c"] and command[3] == POSTSTART_MARKER:
        return command[4:]
    return command


def mutate(pod: Json, rendering: Rendering, prefix: str) -> Mutation:
    if not isinstance(pod, dict):
        raise MutationError("the pod is not an object")
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise MutationError("the pod has no spec object")
    inject = _Spec.parse(rendering.spec)
    warnings: list[str] = list(inject.warnings)

    init_before = _named_list(spec, "initContainers", "spec.initContainers")
    app_before = _named_list(spec, "containers", "spec.containers")
    init_names = {c["name"] for c in init_before}
    app_names = {c["name"] for c in app_before}

    # Container names are unique across init and app containers; injecting one
    # whose name the other list has would make the API server reject the pod.
    injected_app = [
        _prepare(c, inject)
        for c in inject.containers
        if _no_clash(c["name"], init_names, "container", "an init container", warnings)
    ]
    injected_app_names = {c["name"] for c in injected_app}
    injected_init = [
        _prepare(c, inject)
        for c in inject.init_containers
        if _no_clash(
            c["name"], app_names | injected_app_names, "init container", "a container", warnings
        )
    ]

    def with_mounts(container: Json) -> Json:
        return _mount_into(container, inject.volume_mounts, warnings)

    init_after = _place(init_before, injected_init, lambda c: c, "init container", warnings)
    app_after = _place(app_before, injected_app, with_mounts, "container", warnings)
    for target, command in inject.post_start:
        _post_start(app_after, target, command, warnings)

    volumes_before = _named_list(spec, "volumes", "spec.volumes")
    volumes_after = _replace_by_name(volumes_before, inject.volumes)
    aliases_before = _host_aliases(spec)
    aliases_after = _merge_host_aliases(aliases_before, inject.host_aliases)

    patch: list[Json] = []
    patch.extend(_annotation_patch(pod, prefix))
    _field_patch(patch, spec, "initContainers", init_before, init_after)
    _field_patch(patch, spec, "containers", app_before, app_after)
    _field_patch(patch, spec, "volumes", volumes_before, volumes_after)
    _field_patch(patch, spec, "hostAliases", aliases_before, aliases_after)
    if inject.share_process_namespace and spec.get("shareProcessNamespace") is not True:
        _set(patch, spec, "shareProcessNamespace", True)
    return Mutation(patch=patch, warnings=warnings)


# --- the rendering's spec --------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    init_containers: list[Json]
    containers: list[Json]
    volume_mounts: list[Json]
    volumes: list[Json]
    env: list[Json]
    host_aliases: list[Json]
    share_process_namespace: bool
    post_start: list[tuple[str, list[str]]]
    warnings: list[str]

    @classmethod
    def parse(cls, spec: Any) -> _Spec:
        """Check the shapes once, so the rest can index without guarding."""
        if not isinstance(spec, dict):
            raise MutationError("the rendering's spec is not an object")
        warnings: list[str] = []

        def named(key: str, identity: str = "name") -> list[Json]:
            items = _list_of_objects(spec.get(key), f"rendering spec.{key}")
            seen: set[str] = set()
            out = []
            for item in items:
                value = item.get(identity)
                if not isinstance(value, str) or not value:
                    raise MutationError(f"rendering spec.{key}: an entry has no {identity}")
                if value in seen:
                    warnings.append(f"rendering spec.{key} names {value!r} twice; the first wins")
                    continue
                seen.add(value)
                out.append(copy.deepcopy(item))
            return out

        mounts = named("volumeMounts")
        for mount in mounts:
            if not isinstance(mount.get("mountPath"), str) or not mount["mountPath"]:
                raise MutationError(f"rendering volumeMount {mount['name']!r} has no mountPath")

        aliases = _list_of_objects(spec.get("hostAliases"), "rendering spec.hostAliases")
        for alias in aliases:
            if not isinstance(alias.get("ip"), str) or not _str_list(alias.get("hostnames", [])):
                raise MutationError("rendering spec.hostAliases: needs an ip and a hostnames list")

        share = spec.get("shareProcessNamespace", False)
        if share is not None and not isinstance(share, bool):
            raise MutationError("rendering spec.shareProcessNamespace must be a boolean")

        post_start: list[tuple[str, list[str]]] = []
        raw_post = spec.get("postStart") or {}
        if not isinstance(raw_post, dict):
            raise MutationError("rendering spec.postStart must map container names to actions")
        # Sorted: the same rendering always yields the same patch and warnings.
        for target in sorted(raw_post, key=str):
            action = raw_post[target]
            command = action.get("command") if isinstance(action, dict) else None
            if not isinstance(target, str) or not _str_list(command) or not command:
                raise MutationError(f"rendering postStart {target!r} needs a command list")
            post_start.append((target, list(command)))

        return cls(
            init_containers=named("initContainers"),
            containers=named("containers"),
            volume_mounts=mounts,
            volumes=named("volumes"),
            env=named("env"),
            host_aliases=copy.deepcopy(aliases),
            share_process_namespace=bool(share),
            post_start=post_start,
            warnings=warnings,
        )


# --- containers ------------------------------------------------------------------


def _prepare(container: Json, inject: _Spec) -> Json:
    """An injected container with the spec's env and mounts it lacks (by name)."""
    out = copy.deepcopy(container)
    env = _list_of_objects(out.get("env"), f"injected container {out['name']!r} env")
    have = {e.get("name") for e in env}
    env += [copy.deepcopy(e) for e in inject.env if e["name"] not in have]
    if env:
        out["env"] = env
    mounts = _list_of_objects(
        out.get("volumeMounts"), f"injected container {out['name']!r} volumeMounts"
    )
    names = {m.get("name") for m in mounts}
    paths = {m.get("mountPath") for m in mounts}
    for mount in inject.volume_mounts:
        # Also skip a path the container already mounts: chaosfs mounts the data
        # volume Bidirectional itself and must not get a second mount there.
        if mount["name"] not in names and mount["mountPath"] not in paths:
            mounts.append(copy.deepcopy(mount))
    if mounts:
        out["volumeMounts"] = mounts
    return out


def _no_clash(name: str, others: set[str], kind: str, other_kind: str, warnings: list[str]) -> bool:
    if name in others:
        warnings.append(f"{kind} {name!r} not injected: the pod has {other_kind} of that name")
        return False
    return True


def _place(
    before: list[Json],
    injected: list[Json],
    transform: Callable[[Json], Json],
    kind: str,
    warnings: list[str],
) -> list[Json]:
    """Existing entries in order (each transformed), an injected one in place of
    the entry of its name, the other injected ones appended in spec order."""
    by_name = {c["name"]: c for c in injected}
    placed: set[str] = set()
    out: list[Json] = []
    for container in before:
        name = container["name"]
        if name in by_name:
            if name in placed:
                continue  # a duplicate in the pod; the API server would reject it anyway
            if container != by_name[name]:
                warnings.append(f"{kind} {name!r} in the pod was replaced by the injected one")
            out.append(copy.deepcopy(by_name[name]))
            placed.add(name)
        else:
            out.append(transform(container))
    out.extend(copy.deepcopy(c) for c in injected if c["name"] not in placed)
    return out


def _mount_into(container: Json, mounts: list[Json], warnings: list[str]) -> Json:
    if not mounts:
        return container
    existing = _list_of_objects(
        container.get("volumeMounts"), f"container {container['name']!r} volumeMounts"
    )
    by_name = {m["name"]: m for m in mounts}
    paths = {m["mountPath"]: m for m in mounts}
    placed: set[str] = set()
    out: list[Json] = []
    for mount in existing:
        name, path = mount.get("name"), mount.get("mountPath")
        if name in by_name:
            new = by_name[name]
            if name not in placed:
                out.append(copy.deepcopy(new))
                placed.add(name)
            if _view(mount) != _view(new):
                warnings.append(
                    f"container {container['name']!r}: its mount of volume {name!r} at {path!r} "
                    f"was replaced by the injected one at {new['mountPath']!r}"
                )
        elif path in paths:
            warnings.append(
                f"container {container['name']!r}: its mount of volume {name!r} at {path!r} "
                f"was replaced by the injected mount of volume {paths[path]['name']!r}"
            )
        else:
            out.append(mount)
    out.extend(copy.deepcopy(m) for m in mounts if m["name"] not in placed)
    if out == existing and "volumeMounts" in container:
        return container
    return {**container, "volumeMounts": out}


def _view(mount: Json) -> tuple[Any, ...]:
    """What the app sees through a mount; propagation and readOnly may change quietly."""
    return (mount.get("mountPath"), mount.get("subPath") or "", mount.get("subPathExpr") or "")


def _post_start(
    containers: list[Json], target: str, before: list[str], warnings: list[str]
) -> None:
    shown = shlex.join(before)
    for index, container in enumerate(containers):
        if container["name"] != target:
            continue
        command = container.get("command")
        if command is not None and not _str_list(command):
            raise MutationError(f"container {target!r} has a command that is not a list of strings")
        if not command:
            warnings.append(
                f"container {target!r} has no command, so its image's entrypoint is unknown "
                f"here: it was left unchanged and will not wait for {shown!r}; "
                "set its command to fix this"
            )
            return
        wrapped = wrap_command(before, unwrap_command(list(command)))
        if wrapped != command:
            containers[index] = {**container, "command": wrapped}
        return
    warnings.append(f"postStart names container {target!r}, which the pod does not have")


# --- volumes and host aliases -----------------------------------------------------


def _replace_by_name(before: list[Json], added: list[Json]) -> list[Json]:
    by_name = {v["name"]: v for v in added}
    placed: set[str] = set()
    out: list[Json] = []
    for item in before:
        name = item["name"]
        if name in by_name:
            if name not in placed:
                out.append(copy.deepcopy(by_name[name]))
                placed.add(name)
        else:
            out.append(item)
    out.extend(copy.deepcopy(v) for v in added if v["name"] not in placed)
    return out


def _host_aliases(spec: Json) -> list[Json]:
    aliases = _list_of_objects(spec.get("hostAliases"), "spec.hostAliases")
    for alias in aliases:
        if not _str_list(alias.get("hostnames", [])):
            raise MutationError("spec.hostAliases: hostnames must be a list of strings")
    return aliases


def _merge_host_aliases(before: list[Json], added: list[Json]) -> list[Json]:
    out = copy.deepcopy(before)
    for alias in added:
        same_ip = next((a for a in out if a.get("ip") == alias["ip"]), None)
        if same_ip is None:
            out.append(copy.deepcopy(alias))
            continue
        hostnames = list(same_ip.get("hostnames") or [])
        hostnames += [h for h in alias.get("hostnames", []) if h not in hostnames]
        if hostnames != (same_ip.get("hostnames") or []):
            same_ip["hostnames"] = hostnames
    return out


# --- the patch -------------------------------------------------------------------


def _annotation_patch(pod: Json, prefix: str) -> list[Json]:
    key = status_key(prefix)
    metadata = pod.get("metadata")
    if metadata is None:
        return [
            {"op": "add", "path": "/metadata", "value": {"annotations": {key: STATUS_INJECTED}}}
        ]
    if not isinstance(metadata, dict):
        raise MutationError("the pod's metadata is not an object")
    annotations = metadata.get("annotations")
    if annotations is None:
        # No annotations map (or null): a pointer into it would not resolve.
        value = {key: STATUS_INJECTED}
        return [{"op": "add", "path": "/metadata/annotations", "value": value}]
    if not isinstance(annotations, dict):
        raise MutationError("the pod's annotations are not an object")
    if annotations.get(key) == STATUS_INJECTED:
        return []
    path = f"/metadata/annotations/{escape_pointer(key)}"
    return [{"op": "add", "path": path, "value": STATUS_INJECTED}]


def _field_patch(
    patch: list[Json], spec: Json, key: str, before: list[Json], after: list[Json]
) -> None:
    if after != before:
        _set(patch, spec, key, after)


def _set(patch: list[Json], spec: Json, key: str, value: Any) -> None:
    # "replace" needs the member to exist (even as null); "add" creates it.
    op = "replace" if key in spec else "add"
    patch.append({"op": op, "path": f"/spec/{key}", "value": value})


# --- shape checks ----------------------------------------------------------------


def _list_of_objects(value: Any, what: str) -> list[Json]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise MutationError(f"{what} must be a list of objects")
    return list(value)


def _named_list(spec: Json, key: str, what: str) -> list[Json]:
    items = _list_of_objects(spec.get(key), what)
    for item in items:
        if not isinstance(item.get("name"), str):
            raise MutationError(f"{what}: an entry has no name")
    return items


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
