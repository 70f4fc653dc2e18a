"""The watcher's state: what the sources say, what should be published, and
publishing the difference.

Three streams feed it (template ConfigMaps, injection-config ConfigMaps,
namespaces). Nothing is published or removed until each stream has delivered its
first complete list, so a restart never deletes a rendering that is merely not
listed yet. After that, every change recomputes the desired renderings (cheap: a
few dozen renders) and only the differences reach the KV bucket. A config that
fails to render keeps its last good rendering; a config or template that is gone
takes its renderings with it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from chaosbus import gotemplate
from chaosbus.injection import Rendering, rendering_key
from chaosbus.labels import LabelSelector

from .configs import ConfigError, InjectionConfig, parse_configs, template_text, validate_spec

STREAMS = ("templates", "configs", "namespaces")
NAME_LABEL = "kubernetes.io/metadata.name"
POD_SECURITY_PREFIX = "pod-security.kubernetes.io/"
# A NAMESPACES value: {"annotations": our request annotations, "labels": Pod Security's}.
NamespaceValue = dict[str, dict[str, str]]

RENDERINGS = Gauge("chaos_template_renderings", "Renderings in force")
UNREACHABLE = Counter(
    "chaos_template_renderings_unreachable_total",
    "Renderings published in a namespace the webhook's namespace selector leaves out",
)
PUBLISHED = Counter("chaos_template_renderings_published_total", "Renderings written to KV")
REMOVED = Counter("chaos_template_renderings_removed_total", "Renderings removed from KV")
RENDER_ERRORS = Counter("chaos_template_render_errors_total", "Configs that failed to render")
EVENTS = Counter("chaos_template_source_events_total", "Source events applied", ["stream", "type"])


class Store(Protocol):
    """Where renderings go (a JetStream KV bucket in production)."""

    async def put_rendering(self, key: str, rendering: Rendering) -> None: ...
    async def delete_rendering(self, key: str) -> None: ...
    async def put_namespace(
        self, name: str, annotations: dict[str, str], labels: dict[str, str]
    ) -> None: ...
    async def delete_namespace(self, name: str) -> None: ...
    async def report(self, kind: str, **fields: Any) -> None: ...


@dataclass
class _Parsed:
    revision: str
    template: gotemplate.Template | None
    error: str | None


class TemplateWatcher:
    def __init__(
        self,
        store: Store,
        *,
        annotation_prefix: str,
        log: Any,
        published: dict[str, Rendering] | None = None,
        published_namespaces: dict[str, NamespaceValue] | None = None,
        webhook_namespaces: LabelSelector | None = None,
    ) -> None:
        self.store = store
        self.prefix = annotation_prefix
        # The webhook's namespaceSelector, as a label selector: a config published in a
        # namespace it leaves out can never inject anything, which its author must hear.
        self.webhook_namespaces = webhook_namespaces
        self.log = log
        self.templates: dict[str, dict[str, Any]] = {}
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.synced: set[str] = set()
        # What the bucket holds now, so that only differences are written.
        self.published: dict[str, Rendering] = dict(published or {})
        self.published_namespaces = dict(published_namespaces or {})
        self._sources: dict[str, str] = {k: r.source for k, r in self.published.items()}
        self._parsed: dict[str, _Parsed] = {}
        self._rendered: dict[tuple, Rendering] = {}
        self._errors: dict[str, str] = {}  # what was last reported, to report changes only
        self._lock = asyncio.Lock()
        self.reconciled = asyncio.Event()

    # --- input ------------------------------------------------------------------------

    async def apply(self, stream: str, event: Any) -> None:
        """Take one source event (RESET, ADDED, MODIFIED, DELETED) and reconcile."""
        EVENTS.labels(stream, event.type).inc()
        async with self._lock:
            table = self._table(stream)
            if event.type == "RESET":
                table.clear()
                for obj in event.objects:
                    table[self._key(stream, obj)] = obj
                self.synced.add(stream)
            elif event.type in ("ADDED", "MODIFIED"):
                for obj in event.objects:
                    table[self._key(stream, obj)] = obj
            elif event.type == "DELETED":
                for obj in event.objects:
                    table.pop(self._key(stream, obj), None)
            if self.synced.issuperset(STREAMS):
                await self._reconcile()
                self.reconciled.set()

    def _table(self, stream: str) -> dict[Any, Any]:
        tables: dict[str, dict[Any, Any]] = {
            "templates": self.templates,
            "configs": self.configmaps,
            "namespaces": self.namespaces,
        }
        return tables[stream]

    @staticmethod
    def _key(stream: str, obj: dict[str, Any]) -> Any:
        meta = obj["metadata"]
        if stream == "configs":
            return (meta.get("namespace", ""), meta["name"])
        return meta["name"]

    async def resync(self) -> None:
        """Reconcile again: retries what failed to publish, also with no new events."""
        async with self._lock:
            if self.synced.issuperset(STREAMS):
                await self._reconcile()

    # --- reconcile --------------------------------------------------------------------

    def _template(self, name: str) -> _Parsed | None:
        configmap = self.templates.get(name)
        if configmap is None:
            return None
        revision = configmap["metadata"].get("resourceVersion", "")
        cached = self._parsed.get(name)
        if cached is not None and cached.revision == revision:
            return cached
        try:
            parsed = _Parsed(
                revision, gotemplate.Template.parse(template_text(configmap), name), None
            )
        except (gotemplate.TemplateError, ConfigError) as exc:
            parsed = _Parsed(revision, None, str(exc))
        self._parsed[name] = parsed
        return parsed

    def _render(self, config: InjectionConfig) -> Rendering:
        parsed = self._template(config.template)
        if parsed is None:
            raise LookupError(f"template {config.template} not found")
        if parsed.template is None:
            raise ConfigError(parsed.error or "template does not parse")
        # Same config, same template: the same rendering (a resync costs nothing).
        key = (config.source, config.name, config.revision, config.template, parsed.revision)
        cached = self._rendered.get(key)
        if cached is not None:
            return cached
        # render_yaml refuses argument values that would change the YAML's structure.
        spec = validate_spec(parsed.template.render_yaml(config.arguments), config.template)
        rendering = Rendering(
            namespace=config.namespace,
            name=config.name,
            template=config.template,
            selector=config.selector,
            spec=spec,
            source=config.source,
            revision=f"{config.revision}/{parsed.revision}",
            rendered_at=time.time(),
        )
        if len(self._rendered) > 10 * (len(self.configmaps) + 10):
            self._rendered.clear()  # old revisions: let them go
        self._rendered[key] = rendering
        return rendering

    async def _reconcile(self) -> None:
        desired: dict[str, Rendering] = {}
        keep: set[str] = set()  # broken now: the last good rendering stays in force
        errors: dict[str, str] = {}
        for _, configmap in sorted(self.configmaps.items()):
            for item in parse_configs(configmap):
                if isinstance(item, ConfigError):
                    source = str(item).split(": ", 1)[0]
                    errors[source] = str(item)
                    keep.update(k for k, s in self._sources.items() if s == source)
                    continue
                key = rendering_key(item.namespace, item.name)
                if key in desired or key in keep:
                    errors[item.source] = (
                        f"{item.source}: config {item.name} is defined more than once in "
                        f"namespace {item.namespace}; the first definition wins"
                    )
                    continue
                try:
                    desired[key] = self._render(item)
                except LookupError as exc:
                    errors[item.source] = f"{item.source}: {exc}"  # gone: no rendering
                except (gotemplate.TemplateError, ConfigError) as exc:
                    errors[item.source] = f"{item.source}: {exc}"
                    keep.add(key)
        await self._publish(desired, keep)
        await self._report_errors(errors)
        await self._mirror_namespaces()
        RENDERINGS.set(len(self.published))

    async def _publish(self, desired: dict[str, Rendering], keep: set[str]) -> None:
        changed = [
            (key, rendering)
            for key, rendering in sorted(desired.items())
            if key not in self.published or not _same(self.published[key], rendering)
        ]
        # All at once: a template edit changes every config that uses it, and the
        # injector should see the new renderings together, not one round trip apart.
        results = await asyncio.gather(
            *(self.store.put_rendering(key, r) for key, r in changed), return_exceptions=True
        )
        failed = None
        for (key, rendering), result in zip(changed, results, strict=True):
            if isinstance(result, BaseException):
                failed = failed or result  # retried by the next reconcile
                continue
            self.published[key] = rendering
            self._sources[key] = rendering.source
            PUBLISHED.inc()
            self.log.info(
                "rendering_published",
                config=rendering.name,
                namespace=rendering.namespace,
                template=rendering.template,
            )
            await self.store.report(
                "rendering.published",
                namespace=rendering.namespace,
                config=rendering.name,
                template=rendering.template,
                revision=rendering.revision,
            )
            await self._warn_if_unreachable(rendering)
        if failed is not None:
            raise failed
        for key in sorted(set(self.published) - set(desired) - keep):
            gone = self.published.pop(key)
            self._sources.pop(key, None)
            REMOVED.inc()
            await self.store.delete_rendering(key)
            self.log.info("rendering_removed", config=gone.name, namespace=gone.namespace)
            await self.store.report(
                "rendering.removed",
                namespace=gone.namespace,
                config=gone.name,
                template=gone.template,
            )

    async def _warn_if_unreachable(self, rendering: Rendering) -> None:
        """A config in a namespace the webhook is never called for can never apply."""
        if self.webhook_namespaces is None:
            return
        meta = (self.namespaces.get(rendering.namespace) or {}).get("metadata") or {}
        # Kubernetes labels every namespace with its name; a folder source may not.
        labels = {**(meta.get("labels") or {}), NAME_LABEL: rendering.namespace}
        if self.webhook_namespaces.matches(labels):
            return
        UNREACHABLE.inc()
        self.log.warning(
            "config_unreachable",
            namespace=rendering.namespace,
            config=rendering.name,
            webhook_namespaces=str(self.webhook_namespaces),
        )
        await self.store.report(
            "rendering.unreachable",
            namespace=rendering.namespace,
            config=rendering.name,
            reason="the webhook is not called for pods of this namespace "
            f"(its namespace selector: {self.webhook_namespaces})",
        )

    async def _report_errors(self, errors: dict[str, str]) -> None:
        for source, message in sorted(errors.items()):
            if self._errors.get(source) != message:
                RENDER_ERRORS.inc()
                self.log.warning("render_failed", source=source, error=message)
                await self.store.report("template.failed", source=source, error=message)
        self._errors = errors

    async def _mirror_namespaces(self) -> None:
        desired: dict[str, NamespaceValue] = {}
        for name, namespace in self.namespaces.items():
            annotations = namespace["metadata"].get("annotations") or {}
            labels = namespace["metadata"].get("labels") or {}
            ours = {k: v for k, v in annotations.items() if k.startswith(self.prefix + "/")}
            # Pod Security's labels too: where a level is enforced, the injector
            # skips a sidecar the API server would then refuse the pod for.
            security = {k: v for k, v in labels.items() if k.startswith(POD_SECURITY_PREFIX)}
            if ours or security:
                desired[name] = {"annotations": ours, "labels": security}
        for name, value in sorted(desired.items()):
            if self.published_namespaces.get(name) != value:
                await self.store.put_namespace(name, value["annotations"], value["labels"])
                self.published_namespaces[name] = value
        for name in sorted(set(self.published_namespaces) - set(desired)):
            del self.published_namespaces[name]
            await self.store.delete_namespace(name)


def _same(a: Rendering, b: Rendering) -> bool:
    return (a.spec, a.selector, a.template, a.source) == (b.spec, b.selector, b.template, b.source)
