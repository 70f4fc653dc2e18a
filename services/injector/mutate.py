"""The mutation: a pure function from a pod and a rendering to a JSON patch.

Chaos Mesh patched pods piecemeal (``add /spec/containers/-`` per container,
mounts rebuilt from a Go map in random order, ``replace`` on paths that may not
exist). Here the whole new pod is computed first and the patch then replaces or
adds each changed top-level field as a whole, which is simple to reason about
and exact: applying the patch to the pod the webhook saw yields the computed pod.

The rules, beyond Chaos Mesh v0.9's:

* injected containers and init containers get the spec's ``env`` and
  ``volumeMounts`` they lack (by name); one of the same name already in the pod
  is replaced in place (that is what makes a second mutation a no-op);
* every existing app container gets the spec's ``volumeMounts``: a mount of the
  same volume name is replaced by the spec's, a mount at one of the spec's paths
  under another name is dropped (two mounts at one path is an invalid pod), and
  every other mount stays; a dropped mount that the app could have used is
  reported as a warning;
* every existing app container gets the spec's ``env`` variables it lacks (by
  name), and keeps its own value of one it has, as Chaos Mesh v0.9 did;
* ``volumes`` are replaced by name or appended, ``hostAliases`` merged by IP
  without duplicate hostnames, ``shareProcessNamespace`` set when the spec asks;
* ``postStart`` makes the named container run the command before its own, see
  :func:`wrap_command`.

Some pods cannot be injected without losing data, hanging, or being refused
by the API server: a volume of the pod named like one the template adds (it
would be replaced), an app mount the template's mounts would drop or move, a
template mount of a volume the pod does not have (its data volume not named
like the config's ``VolumeName``), a container of the pod named like one the
template adds (the sidecar or its init step would be missing or replace the
app's), ``hostPID`` with a template that shares the process namespace, or any
other rule of :mod:`.podrules` the result would newly break. The mutation then
lists :class:`Refusal` s and the caller admits the pod unchanged.

A pod already injected is not mutated again; :func:`complete` only adds what
the API server's reinvocation brought in without the sidecar's mounts (a
container another webhook added after this one).

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

from . import podrules

STATUS_INJECTED = "injected"
SHELL = "/bin/sh"
# $0 of the wrapping shell; also how a wrapped command is recognised, so that
# a second mutation re-wraps the original command instead of nesting wrappers.
POSTSTART_MARKER = "chaosbus-poststart"

Json = dict[str, Any]


class MutationError(ValueError):
    """The pod or the rendering cannot be mutated; the pod goes through unchanged."""


@dataclass(frozen=True)
class Refusal:
    """Why a pod is better off without the injection: ``rule`` names the check
    (a metric label), ``message`` says what would have gone wrong."""

    rule: str
    message: str


@dataclass(frozen=True)
class Mutation:
    patch: list[Json]
    warnings: list[str] = field(default_factory=list)
    # Non-empty: do not apply the patch, admit the pod unchanged.
    refusals: list[Refusal] = field(default_factory=list)
    # What :func:`complete` added, for the log and the audit trail.
    changes: list[str] = field(default_factory=list)

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


def _pod_spec(pod: Any) -> Json:
    if not isinstance(pod, dict):
        raise MutationError("the pod is not an object")
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise MutationError("the pod has no spec object")
    return spec


def mutate(pod: Json, rendering: Rendering, prefix: str) -> Mutation:
    spec = _pod_spec(pod)
    inject = _Spec.parse(rendering.spec)
    warnings: list[str] = list(inject.warnings)

    init_before = _named_list(spec, "initContainers", "spec.initContainers")
    app_before = _named_list(spec, "containers", "spec.containers")
    volumes_before = _named_list(spec, "volumes", "spec.volumes")
    init_names = {c["name"] for c in init_before}
    app_names = {c["name"] for c in app_before}
    pod_volumes = {v["name"] for v in volumes_before}

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
    refusals = _clashes(init_before, app_before, volumes_before, inject)
    lost: list[str] = []

    def into_app(container: Json) -> Json:
        mounted = _mount_into(container, inject.volume_mounts, warnings, pod_volumes, lost)
        return _add_env(mounted, inject.env)

    init_after = _place(init_before, injected_init, lambda c: c, "init container", warnings)
    app_after = _place(app_before, injected_app, into_app, "container", warnings)
    for target, command in inject.post_start:
        _post_start(app_after, target, command, warnings)
    refusals += [Refusal("mount-lost", message) for message in lost]
    refusals += _missing_volumes(inject, pod_volumes)
    if inject.share_process_namespace and spec.get("hostPID") is True:
        refusals.append(
            Refusal(
                "host-pid",
                "the pod sets hostPID: true and the template shareProcessNamespace: true, "
                "which Kubernetes refuses together",
            )
        )

    volumes_after = _replace_by_name(volumes_before, inject.volumes)
    aliases_before = _host_aliases(spec)
    aliases_after = _merge_host_aliases(aliases_before, inject.host_aliases)
    share = inject.share_process_namespace and spec.get("shareProcessNamespace") is not True

    after = {
        **spec,
        "initContainers": init_after,
        "containers": app_after,
        "volumes": volumes_after,
        **({"shareProcessNamespace": True} if share else {}),
    }
    known = set(podrules.problems(spec))
    new_problems = [p for p in podrules.problems(after) if p not in known]
    if new_problems and not refusals:
        # A safety net under the checks above, which say more precisely what is wrong.
        refusals.append(
            Refusal("invalid-pod", "the injected pod would be invalid: " + "; ".join(new_problems))
        )

    patch: list[Json] = []
    patch.extend(_annotation_patch(pod, prefix))
    _field_patch(patch, spec, "initContainers", init_before, init_after)
    _field_patch(patch, spec, "containers", app_before, app_after)
    _field_patch(patch, spec, "volumes", volumes_before, volumes_after)
    _field_patch(patch, spec, "hostAliases", aliases_before, aliases_after)
    if share:
        _set(patch, spec, "shareProcessNamespace", True)
    return Mutation(patch=patch, warnings=warnings, refusals=refusals)


def has_injection(pod: Any, rendering: Rendering) -> bool:
    """Whether the pod holds every container and init container the rendering adds
    (by name): an injected pod, as opposed to one that only carries the status
    annotation (copied from an injected pod, or injected by someone else)."""
    spec = pod.get("spec") if isinstance(pod, dict) else None
    template = rendering.spec if isinstance(rendering.spec, dict) else {}
    if not isinstance(spec, dict):
        return False

    def names(value: Any) -> set[Any]:
        return (
            {c.get("name") for c in value if isinstance(c, dict)}
            if isinstance(value, list)
            else set()
        )

    wanted_app = names(template.get("containers"))
    wanted_init = names(template.get("initContainers"))
    if not wanted_app and not wanted_init:
        return False
    return wanted_app <= names(spec.get("containers")) and wanted_init <= names(
        spec.get("initContainers")
    )


def complete(pod: Json, rendering: Rendering) -> Mutation:
    """What an injected pod lacks when the API server calls the webhook again.

    With ``reinvocationPolicy: IfNeeded`` the API server calls the webhook a
    second time when a later webhook (or its own ServiceAccount plugin, adding
    token mounts) changed the pod. A container added by then has none of the
    sidecar's mounts or env: give it those it lacks, as the first call gave
    every app container. Nothing is replaced or moved (the pod is injected
    already, and what the other webhooks changed is theirs); a mount whose path
    the container already uses is left out with a warning.
    """
    spec = _pod_spec(pod)
    inject = _Spec.parse(rendering.spec)
    injected = {c["name"] for c in inject.containers} | {c["name"] for c in inject.init_containers}
    warnings: list[str] = []
    changes: list[str] = []
    app_before = _named_list(spec, "containers", "spec.containers")
    app_after: list[Json] = []
    for container in app_before:
        if container["name"] in injected:
            app_after.append(container)
            continue
        topped = _add_env(_add_mounts(container, inject.volume_mounts, warnings), inject.env)
        if topped != container:
            added = [
                m["name"]
                for m in topped.get("volumeMounts") or []
                if m not in (container.get("volumeMounts") or [])
            ]
            env = [
                e["name"] for e in topped.get("env") or [] if e not in (container.get("env") or [])
            ]
            what = [f"mounts {', '.join(added)}"] if added else []
            what += [f"env {', '.join(env)}"] if env else []
            name = container["name"]
            changes.append(f"container {name!r} got the sidecar's {' and '.join(what)}")
        app_after.append(topped)
    volumes_before = _named_list(spec, "volumes", "spec.volumes")
    have = {v["name"] for v in volumes_before}
    missing = [copy.deepcopy(v) for v in inject.volumes if v["name"] not in have]
    if missing:
        changes.append(f"volumes {', '.join(v['name'] for v in missing)} were added back")
    patch: list[Json] = []
    _field_patch(patch, spec, "containers", app_before, app_after)
    _field_patch(patch, spec, "volumes", volumes_before, volumes_before + missing)
    return Mutation(patch=patch, warnings=warnings, changes=changes)


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
        # Filled in order of the fields read, so the same rendering always gives the
        # same warnings in the same order.
        warnings: list[str] = []
        mounts = _spec_mounts(spec, warnings)
        aliases = _spec_host_aliases(spec)
        share = _spec_share_process_namespace(spec)
        post_start = _spec_post_start(spec)
        return cls(
            init_containers=_spec_named(spec, "initContainers", warnings),
            containers=_spec_named(spec, "containers", warnings),
            volume_mounts=mounts,
            volumes=_spec_named(spec, "volumes", warnings),
            env=_spec_named(spec, "env", warnings),
            host_aliases=copy.deepcopy(aliases),
            share_process_namespace=bool(share),
            post_start=post_start,
            warnings=warnings,
        )


def _spec_named(spec: Json, key: str, warnings: list[str]) -> list[Json]:
    """The rendering's list under ``key``, copied; every entry needs a name, and of
    two entries with one name the first is kept (with a warning)."""
    items = _list_of_objects(spec.get(key), f"rendering spec.{key}")
    seen: set[str] = set()
    out = []
    for item in items:
        value = item.get("name")
        if not isinstance(value, str) or not value:
            raise MutationError(f"rendering spec.{key}: an entry has no name")
        if value in seen:
            warnings.append(f"rendering spec.{key} names {value!r} twice; the first wins")
            continue
        seen.add(value)
        out.append(copy.deepcopy(item))
    return out


def _spec_mounts(spec: Json, warnings: list[str]) -> list[Json]:
    mounts = _spec_named(spec, "volumeMounts", warnings)
    for mount in mounts:
        if not isinstance(mount.get("mountPath"), str) or not mount["mountPath"]:
            raise MutationError(f"rendering volumeMount {mount['name']!r} has no mountPath")
    return mounts


def _spec_host_aliases(spec: Json) -> list[Json]:
    aliases = _list_of_objects(spec.get("hostAliases"), "rendering spec.hostAliases")
    for alias in aliases:
        if not isinstance(alias.get("ip"), str) or not _str_list(alias.get("hostnames", [])):
            raise MutationError("rendering spec.hostAliases: needs an ip and a hostnames list")
    return aliases


def _spec_share_process_namespace(spec: Json) -> bool | None:
    share = spec.get("shareProcessNamespace", False)
    if share is not None and not isinstance(share, bool):
        raise MutationError("rendering spec.shareProcessNamespace must be a boolean")
    return share


def _spec_post_start(spec: Json) -> list[tuple[str, list[str]]]:
    """(container name, command) of each postStart entry, sorted by name: the same
    rendering always yields the same patch and warnings."""
    raw_post = spec.get("postStart") or {}
    if not isinstance(raw_post, dict):
        raise MutationError("rendering spec.postStart must map container names to actions")
    post_start: list[tuple[str, list[str]]] = []
    for target in sorted(raw_post, key=str):
        action = raw_post[target]
        command = action.get("command") if isinstance(action, dict) else None
        if not isinstance(target, str) or not _str_list(command) or not command:
            raise MutationError(f"rendering postStart {target!r} needs a command list")
        post_start.append((target, list(command)))
    return post_start


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


def _clashes(
    init_before: list[Json], app_before: list[Json], volumes_before: list[Json], inject: _Spec
) -> list[Refusal]:
    """The pod's own containers and volumes that share a name with the template's.

    A container of the pod named like the sidecar would be replaced by it, or
    (an init container) keep the sidecar out while the app still waits for it
    in its postStart command; one named like the template's init container
    would replace it or keep it out, and the sidecar would start on data that
    was never moved aside. A volume would be replaced by the template's. Entries
    equal to the template's (a pod made from an injected one) are no clash.
    """
    pod_init = {c["name"]: c for c in init_before}
    pod_app = {c["name"]: c for c in app_before}
    messages = _container_clashes(pod_init, pod_app, inject)
    messages += _init_container_clashes(pod_init, pod_app, inject)
    refusals = [Refusal("container-clash", message) for message in messages]
    return refusals + _volume_clashes(volumes_before, inject)


def _container_clashes(
    pod_init: dict[str, Json], pod_app: dict[str, Json], inject: _Spec
) -> list[str]:
    """The template's containers (the sidecar) against the pod's containers."""
    messages: list[str] = []
    for container in inject.containers:
        name = container["name"]
        if name in pod_init:
            messages.append(
                f"the pod has an init container named {name!r}, like the template's container"
            )
        elif name in pod_app and pod_app[name] != _prepare(container, inject):
            messages.append(
                f"the pod has its own container named {name!r}, like the template's container"
            )
    return messages


def _init_container_clashes(
    pod_init: dict[str, Json], pod_app: dict[str, Json], inject: _Spec
) -> list[str]:
    """The template's init containers against its own containers and the pod's."""
    template_app = {c["name"] for c in inject.containers}
    messages: list[str] = []
    for container in inject.init_containers:
        name = container["name"]
        if name in template_app:
            messages.append(f"the template names both a container and an init container {name!r}")
        elif name in pod_app:
            messages.append(
                f"the pod has a container named {name!r}, like the template's init container"
            )
        elif name in pod_init and pod_init[name] != _prepare(container, inject):
            messages.append(
                f"the pod has its own init container named {name!r}, like the template's "
                "init container"
            )
    return messages


def _volume_clashes(volumes_before: list[Json], inject: _Spec) -> list[Refusal]:
    pod_volumes = {v["name"]: v for v in volumes_before}
    return [
        Refusal(
            "volume-clash",
            f"the pod has its own volume named {volume['name']!r}, like a volume the template "
            "adds; it would be replaced",
        )
        for volume in inject.volumes
        if volume["name"] in pod_volumes and pod_volumes[volume["name"]] != volume
    ]


def _missing_volumes(inject: _Spec, pod_volumes: set[str]) -> list[Refusal]:
    """Template mounts of volumes neither the pod nor the template has.

    In Chaos Mesh's template that is the data volume, named by the config's
    ``VolumeName``: when the pod calls its data volume otherwise, the sidecar
    and the app would mount a volume that does not exist.
    """
    available = pod_volumes | {v["name"] for v in inject.volumes}
    wanted: list[str] = []
    containers = [*inject.init_containers, *inject.containers]
    for mount in inject.volume_mounts + [
        m for c in containers for m in c.get("volumeMounts") or [] if isinstance(m, dict)
    ]:
        name = mount.get("name")
        if name not in available and name not in wanted:
            wanted.append(str(name))
    return [
        Refusal(
            "missing-volume",
            f"the template mounts volume {name!r}, which the pod does not have (the config's "
            "VolumeName must be the name of the pod's data volume)",
        )
        for name in wanted
    ]


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


def _mount_into(
    container: Json,
    mounts: list[Json],
    warnings: list[str],
    pod_volumes: set[str] | None = None,
    lost: list[str] | None = None,
) -> Json:
    """The container with the spec's mounts; a mount of one of ``pod_volumes`` that
    would be dropped or show the volume elsewhere is reported in ``lost``: the app
    would no longer find its data where it looks for it."""
    if not mounts:
        return container
    existing = _list_of_objects(
        container.get("volumeMounts"), f"container {container['name']!r} volumeMounts"
    )
    by_name = {m["name"]: m for m in mounts}
    paths = {m["mountPath"]: m for m in mounts}
    own = pod_volumes or set()
    placed: set[str] = set()
    out: list[Json] = []
    for mount in existing:
        name, path = mount.get("name"), mount.get("mountPath")
        if name in by_name:
            new = by_name[name]
            if name not in placed:
                out.append(copy.deepcopy(new))
                placed.add(str(name))
            if _view(mount) != _view(new):
                warnings.append(
                    f"container {container['name']!r}: its mount of volume {name!r} at {path!r} "
                    f"was replaced by the injected one at {new['mountPath']!r}"
                )
                if name in own and lost is not None:
                    lost.append(
                        f"container {container['name']!r} mounts volume {name!r} at {path!r}"
                        f"{_sub(mount)}; the template mounts it at {new['mountPath']!r}"
                        f"{_sub(new)}, so the app would not find its data"
                    )
        elif path in paths:
            warnings.append(
                f"container {container['name']!r}: its mount of volume {name!r} at {path!r} "
                f"was replaced by the injected mount of volume {paths[path]['name']!r}"
            )
            if name in own and lost is not None:
                lost.append(
                    f"container {container['name']!r} mounts volume {name!r} at {path!r}, "
                    f"where the template mounts volume {paths[path]['name']!r}: the app would "
                    f"lose its mount (is {name!r} the data volume? the config's VolumeName "
                    "must name it)"
                )
        else:
            out.append(mount)
    out.extend(copy.deepcopy(m) for m in mounts if m["name"] not in placed)
    if out == existing and "volumeMounts" in container:
        return container
    return {**container, "volumeMounts": out}


def _sub(mount: Json) -> str:
    sub = mount.get("subPath") or mount.get("subPathExpr")
    return f" (subPath {sub!r})" if sub else ""


def _add_mounts(container: Json, mounts: list[Json], warnings: list[str]) -> Json:
    """The spec's mounts the container lacks by name, where its path is free."""
    existing = _list_of_objects(
        container.get("volumeMounts"), f"container {container['name']!r} volumeMounts"
    )
    names = {m.get("name") for m in existing}
    paths = {m.get("mountPath") for m in existing}
    added: list[Json] = []
    for mount in mounts:
        if mount["name"] in names:
            continue
        if mount["mountPath"] in paths:
            warnings.append(
                f"container {container['name']!r} already mounts something at "
                f"{mount['mountPath']!r}: the sidecar's mount of volume {mount['name']!r} "
                "was not added"
            )
            continue
        added.append(copy.deepcopy(mount))
    if not added:
        return container
    return {**container, "volumeMounts": existing + added}


def _add_env(container: Json, env: list[Json]) -> Json:
    """Chaos Mesh v0.9's rule: add the variables the container lacks, by name;
    one it sets keeps the container's value."""
    if not env:
        return container
    existing = _list_of_objects(container.get("env"), f"container {container['name']!r} env")
    have = {e.get("name") for e in existing}
    added = [copy.deepcopy(e) for e in env if e["name"] not in have]
    if not added:
        return container
    return {**container, "env": existing + added}


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
    if annotations is None or annotations == {}:
        # No annotations map (or null, or empty, which the API server's encoding
        # leaves out): a pointer into it would not resolve.
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
    # The API server applies the patch to its own encoding of the pod, which
    # leaves out null and empty optional fields: "replace" would fail there on
    # a member the webhook saw as null or []. "add" sets a member whether it
    # exists or not; "replace" is kept where the member surely exists.
    op = "replace" if spec.get(key) not in (None, [], {}, False) else "add"
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
