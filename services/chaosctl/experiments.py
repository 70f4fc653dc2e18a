"""chaosctl's experiment verbs: ``apply``, ``delete``, ``experiments`` and
``experiment describe|pause|resume``.

Without Kubernetes, chaosctl is how experiments (Chaos Mesh v0.9 ``IoChaos``, 2.x
``IOChaos`` and chaosbus's own ``FsChaos``) reach the chaos-controller: ``apply``
writes each manifest into the ``EXPERIMENTS`` bucket, the controller runs it and
writes its progress into ``EXPERIMENT_STATUS``, and the other verbs read that
progress or flip the two switches a user has, ``paused`` and ``deleting``.

``apply`` checks every document of every file before it writes any, so that a
mistake in the third file does not leave the first two half applied; each
refusal also goes into the audit trail, as an ``experiment.rejected`` event.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import nats.errors
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)

from chaosbus import codec
from chaosbus.audit import STREAM, audit_subject, ensure_stream, make_event
from chaosbus.experiments.errors import SpecError
from chaosbus.experiments.manifests import MAX_DOCUMENT_BYTES, load_documents
from chaosbus.experiments.spec import Experiment, parse_manifest
from chaosbus.experiments.store import (
    MAX_ENTRY_BYTES,
    ExperimentStore,
    SpecEntry,
    StaleWrite,
    Status,
    key_of,
)

from . import experiment_output as show
from .auditlog import events
from .client import Refused, Session, Unreachable
from .commands import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, Outcome, actor
from .rulespec import UsageError

# How long each verb waits for the controller unless --timeout says otherwise:
# deleting recovers every pod first, so it gets longer.
WAIT_DEFAULTS: dict[tuple[str, str | None], float] = {
    ("apply", None): 10.0,
    ("delete", None): 30.0,
    ("experiment", "pause"): 10.0,
    ("experiment", "resume"): 10.0,
}
POLL_INTERVAL = 0.1
SUFFIXES = (".yaml", ".yml", ".json")
CAS_ATTEMPTS = 20
# Phases in which apply --wait takes an experiment as picked up and running.
SETTLED = ("Running", "Waiting", "Finished", "Paused")
# Phases a scheduled experiment may have before its first run: picked up all the same.
BEFORE_FIRST_RUN = ("Waiting", "Paused")
# Audit stream limits used when chaosctl is the first to need the stream (as a sidecar does).
AUDIT_MAX_AGE = 7 * 86400.0
AUDIT_MAX_BYTES = 1 << 30


@dataclass
class Result(Outcome):
    """An Outcome that also carries errors, printed one per line as ``chaosctl: ...``."""

    errors: list[str] = dataclasses.field(default_factory=list)


class Rejected(Exception):
    """An apply refused before anything was written: one line, audited."""

    def __init__(
        self, line: str, *, reason: str, source: str, ref: str | None, code: int = EXIT_USAGE
    ) -> None:
        super().__init__(line)
        self.line, self.reason, self.source, self.ref, self.code = line, reason, source, ref, code


def _bus_errors(
    handler: Callable[[Session, argparse.Namespace], Awaitable[Outcome]],
) -> Callable[[Session, argparse.Namespace], Awaitable[Outcome]]:
    """A NATS or JetStream failure becomes one line and exit 3, never a traceback."""

    @functools.wraps(handler)
    async def run(s: Session, args: argparse.Namespace) -> Outcome:
        try:
            return await handler(s, args)
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unreachable(
                f"NATS JetStream failed: {exc or type(exc).__name__} "
                "(is the server up, with JetStream enabled?)"
            ) from None

    return run


# --- reading manifests ----------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    name: str  # as the user gave it; "stdin" for -
    data: bytes


@dataclass(frozen=True)
class Document:
    source: str
    index: int  # 1-based, within its file
    manifest: dict[str, Any]
    experiment: Experiment

    @property
    def ref(self) -> str:
        return self.experiment.key()

    @property
    def where(self) -> str:
        return f"{self.source} document {self.index}"


def _clip(text: str, limit: int = 200) -> str:
    """One printable line of bounded length, whatever the input held."""
    if not text.isprintable():
        text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class InputError(UsageError):
    """A file that cannot be read as manifests: exit 2; apply also audits it."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


def _read(stream: BinaryIO, name: str) -> bytes:
    data = stream.read(MAX_DOCUMENT_BYTES + 1)  # never more: the file may be huge
    if len(data) > MAX_DOCUMENT_BYTES:
        raise InputError(name, f"larger than the {MAX_DOCUMENT_BYTES} byte limit")
    return data


def _read_file(path: Path, name: str) -> bytes:
    try:
        with path.open("rb") as f:
            return _read(f, name)
    except OSError as exc:
        raise InputError(name, f"cannot read it: {exc.strerror or exc}") from None


def read_sources(paths: Iterable[str], stdin: BinaryIO | None = None) -> list[Source]:
    """Every file named, in order: a directory gives its *.yaml, *.yml and *.json files
    (sorted, not recursive), ``-`` gives standard input. Raises InputError."""
    out: list[Source] = []
    stdin_read = False
    for given in paths:
        if given == "-":
            if stdin_read:
                raise InputError("-", "standard input given twice")
            stdin_read = True
            out.append(Source("stdin", _read(stdin or sys.stdin.buffer, "stdin")))
            continue
        path = Path(given)
        if path.is_dir():
            try:
                files = sorted(
                    p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file()
                )
            except OSError as exc:
                raise InputError(given, f"cannot list it: {exc.strerror or exc}") from None
            if not files:
                raise InputError(given, "no .yaml, .yml or .json file in this directory")
            out += [Source(str(p), _read_file(p, str(p))) for p in files]
        else:
            out.append(Source(given, _read_file(path, given)))
    return out


def identity(doc: Any, default_namespace: str) -> tuple[str | None, str | None]:
    """(kind, ns/name) as far as a document says them, for messages and ``delete -f``."""
    if not isinstance(doc, dict):
        return None, None
    kind = doc.get("kind") if isinstance(doc.get("kind"), str) else None
    raw_meta = doc.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    name = meta.get("name") if isinstance(meta.get("name"), str) and meta.get("name") else None
    namespace = meta.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        namespace = default_namespace
    return (
        _clip(kind, 63) if kind else None,
        _clip(f"{namespace}/{name}", 253) if name else None,
    )


def _load(source: Source) -> list[Any]:
    try:
        return load_documents(source.data, source=source.name)
    except Exception as exc:  # SpecError; anything else is a parser bug, still one line
        reason = str(exc) if isinstance(exc, SpecError) else f"{type(exc).__name__}: {exc}"
        # The parser's messages start with the file's name already.
        reason = reason.removeprefix(f"{source.name}: ")
        raise Rejected(
            _clip(f"{source.name}: {reason}", 600), reason=reason, source=source.name, ref=None
        ) from None


def _needs_kubernetes(experiment: Experiment) -> str | None:
    sel = experiment.selector
    if not sel.needs_kubernetes():
        return None
    used = [
        name
        for name, value in (
            ("annotations", sel.annotations),
            ("fields", sel.fields),
            ("phases", sel.phases),
            ("nodes", sel.nodes),
            ("node selectors", sel.node_selectors),
        )
        if value
    ]
    return (
        f"selects by {'/'.join(used) or 'pod properties'}, which needs the Kubernetes API: "
        "run it as an FsChaos object in a cluster"
    )


def _rejected(source: str, index: int, kind: str | None, ref: str | None, reason: str) -> Rejected:
    line = show.rejection(source, index, kind, ref, _clip(reason, 500))
    return Rejected(line, reason=reason, source=source, ref=ref)


def _given_namespace(raw: Any) -> str | None:
    meta = raw.get("metadata") if isinstance(raw, dict) else None
    namespace = meta.get("namespace") if isinstance(meta, dict) else None
    return namespace if isinstance(namespace, str) and namespace else None


def _parse_one(
    source: str, index: int, raw: Any, namespace: str | None, seen: dict[str, str]
) -> Document:
    """One document, checked on its own and against those before it (``seen``)."""
    default_namespace = namespace or "default"
    kind, ref = identity(raw, default_namespace)
    given = _given_namespace(raw)
    if namespace and given and given != namespace:
        reason = f"its namespace {given!r} is not the --namespace given ({namespace!r})"
        raise _rejected(source, index, kind, ref, reason)
    try:
        experiment = parse_manifest(raw, default_namespace=default_namespace)
    except SpecError as exc:
        raise _rejected(source, index, kind, ref, str(exc)) from None
    except Exception as exc:  # a parser bug: still one line
        reason = f"cannot be read: {type(exc).__name__}: {exc}"
        raise _rejected(source, index, kind, ref, reason) from None
    ref, kind = experiment.key(), experiment.kind
    why = _needs_kubernetes(experiment)
    if why:
        raise _rejected(source, index, kind, ref, why)
    if ref in seen:
        raise _rejected(source, index, kind, ref, f"{ref} is also defined in {seen[ref]}")
    try:
        size = len(codec.encode(_entry(raw, "").to_wire()))
    except Exception as exc:
        raise _rejected(source, index, kind, ref, f"cannot be stored: {exc}") from None
    if size > MAX_ENTRY_BYTES:
        raise _rejected(source, index, kind, ref, f"too large to store ({size} bytes)")
    seen[ref] = f"{source} document {index}"
    return Document(source, index, raw, experiment)


def parse_documents(sources: list[Source], namespace: str | None) -> list[Document]:
    """Every document of every file, parsed and checked.

    Raises Rejected on the first bad one, naming its file and place.
    """
    seen: dict[str, str] = {}
    docs = [
        _parse_one(source.name, index, raw, namespace, seen)
        for source in sources
        for index, raw in enumerate(_load(source), 1)
    ]
    if not docs:
        names = ", ".join(s.name for s in sources)
        reason = "no experiment in the input"
        raise Rejected(f"{names}: {reason}", reason=reason, source=names, ref=None)
    return docs


def check_selection(docs: list[Document], sidecars: list[dict[str, Any]]) -> None:
    """Each experiment must select a registered sidecar (lost ones count): without
    Kubernetes the registry is the only list of pods there is."""
    for doc in docs:
        if not any(_matches(doc.experiment, car) for car in sidecars):
            reason = (
                f"selects no sidecar (none of the {len(sidecars)} registered matches; "
                "`chaosctl sidecars` lists them)"
                if sidecars
                else "selects no sidecar (none is registered)"
            )
            raise Rejected(
                show.rejection(doc.source, doc.index, doc.experiment.kind, doc.ref, reason),
                reason=reason,
                source=doc.source,
                ref=doc.ref,
            )


def _matches(experiment: Experiment, car: dict[str, Any]) -> bool:
    labels = car.get("labels")
    namespace, name = car.get("namespace"), car.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str):
        return False
    try:
        return experiment.selector.matches_sidecar(
            namespace, name, labels if isinstance(labels, dict) else {}
        )
    except Exception:  # a malformed registry entry selects nothing
        return False


# --- the store --------------------------------------------------------------------------------


async def _store(s: Session, *, create: bool) -> ExperimentStore | None:
    """The experiment buckets; None if they do not exist yet and ``create`` is off
    (reading must not create them)."""
    try:
        return await ExperimentStore.open(s.nc, create=create)
    except BucketNotFoundError:
        return None


@dataclass
class Current:
    """An entry as stored: None entry with an error if it cannot be read."""

    entry: SpecEntry | None
    revision: int
    error: str | None = None


async def _current(store: ExperimentStore, ref: str) -> Current | None:
    try:
        got = await store.specs_kv.get(key_of(ref))
    except KeyNotFoundError:
        return None
    if got.value is None:
        return None
    try:
        entry = SpecEntry.from_wire(codec.decode(got.value, limit=MAX_ENTRY_BYTES))
    except (ValueError, codec.DecodeError) as exc:
        return Current(None, got.revision or 0, str(exc))
    return Current(entry, got.revision or 0)


def _entry(manifest: dict[str, Any], uid: str) -> SpecEntry:
    return SpecEntry(manifest=manifest, source="chaosctl", actor=actor(), time=time.time(), uid=uid)


def _same(manifest: dict[str, Any], stored: dict[str, Any]) -> bool:
    # Compared as stored (msgpack), so that a tuple and a list, say, do not differ.
    return codec.decode(codec.encode(manifest), limit=MAX_ENTRY_BYTES) == stored


def _refusal(current: Current | None, ref: str) -> str | None:
    """Why apply must leave an existing entry alone, if it must."""
    if current is None or current.entry is None:
        return None
    if current.entry.deleting:
        return f"{ref} is being deleted: apply it again once `chaosctl delete {ref}` has finished"
    if current.entry.source != "chaosctl":
        return (
            f"{ref} comes from Kubernetes (an object in the cluster): change it there, "
            "chaosctl would be overwritten"
        )
    return None


async def _write(store: ExperimentStore, doc: Document, current: Current | None) -> str:
    """created, configured or unchanged; compare-and-set, re-read on a race.
    Raises Refused when the entry became one apply must leave alone."""
    ref = doc.ref
    for _ in range(CAS_ATTEMPTS):
        why = _refusal(current, ref)
        if why:
            raise Refused(why)
        if current is None:
            entry = _entry(doc.manifest, uuid.uuid4().hex)
            try:
                await store.specs_kv.create(key_of(ref), codec.encode(entry.to_wire()))
                return "created"
            except KeyWrongLastSequenceError:
                pass  # someone created it meanwhile: look again
        elif current.entry is None:
            # Unreadable (written by something broken): replace it as a new experiment.
            entry = _entry(doc.manifest, uuid.uuid4().hex)
            try:
                await store.update_spec(ref, entry, current.revision)
                return "configured"
            except StaleWrite:
                pass
        elif _same(doc.manifest, current.entry.manifest):
            return "unchanged"
        else:
            entry = dataclasses.replace(
                current.entry, manifest=doc.manifest, actor=actor(), time=time.time()
            )
            try:
                await store.update_spec(ref, entry, current.revision)
                return "configured"
            except StaleWrite:
                pass
        current = await _current(store, ref)
    raise Refused(f"{ref} kept changing while chaosctl wrote it; try again")


# --- auditing ---------------------------------------------------------------------------------


async def audit_rejection(s: Session, rejected: Rejected) -> list[str]:
    """One ``experiment.rejected`` event; a warning (not a failure) if it cannot be written."""
    event = make_event(
        "chaosctl",
        "experiment.rejected",
        actor=actor(),
        experiment=rejected.ref,
        reason=rejected.reason,
        source=rejected.source,
    )
    js = s.nc.jetstream(timeout=min(s.timeout, 2.0))
    try:
        try:
            await js.stream_info(STREAM)
        except NotFoundError:
            # No sidecar ever ran here: create it as a sidecar would (only when missing).
            await ensure_stream(s.nc, max_age=AUDIT_MAX_AGE, max_bytes=AUDIT_MAX_BYTES)
        await js.publish(
            audit_subject("chaosctl", "experiment.rejected"),
            codec.encode(event),
            headers={"Nats-Msg-Id": event["id"]},
            timeout=min(s.timeout, 2.0),
        )
    except Exception as exc:
        return [f"the refusal was not written to the audit trail: {exc or type(exc).__name__}"]
    return []


async def experiment_events(s: Session, ref: str) -> list[dict[str, Any]]:
    """The controller's audit events about one experiment, oldest first."""
    replay = events(
        s, since=None, since_seq=None, kind=None, pod=None, follow=False, service="controller"
    )
    try:
        return [event async for event in replay if event.get("experiment") == ref]
    except NotFoundError:
        return []  # no audit stream yet


# --- apply --------------------------------------------------------------------------------------


def check_input(args: argparse.Namespace) -> Rejected | None:
    """Read and check the files before connecting (standard input can be read once, so
    what was read is kept for ``apply``): a bad file is told with exit 2 even when NATS
    cannot be reached to audit the refusal."""
    try:
        try:
            args.sources = read_sources(args.files)
        except InputError as exc:
            raise Rejected(str(exc), reason=exc.reason, source=exc.source, ref=None) from None
        args.documents = parse_documents(args.sources, args.namespace)
    except Rejected as rejected:
        args.rejected = rejected
        return rejected
    return None


@_bus_errors
async def apply(s: Session, args: argparse.Namespace) -> Outcome:
    try:
        if getattr(args, "documents", None) is None:
            rejected = getattr(args, "rejected", None) or check_input(args)
            if rejected is not None:
                raise rejected
        docs = args.documents
        check_selection(docs, await s.sidecars())
        store = await _store(s, create=False)
        current: dict[str, Current | None] = {}
        for doc in docs:
            current[doc.ref] = await _current(store, doc.ref) if store else None
            why = _refusal(current[doc.ref], doc.ref)
            if why:
                line = show.rejection(doc.source, doc.index, doc.experiment.kind, doc.ref, why)
                raise Rejected(line, reason=why, source=doc.source, ref=doc.ref, code=EXIT_REFUSED)
    except Rejected as rejected:
        warnings = await audit_rejection(s, rejected)
        data = {
            "rejected": {
                "source": rejected.source,
                "experiment": rejected.ref,
                "reason": rejected.reason,
            }
        }
        return Result(rejected.code, "", data, warnings, errors=[rejected.line])

    store = store or await _store(s, create=True)
    assert store is not None
    lines: list[str] = []
    items: list[dict[str, Any]] = []
    errors: list[str] = []
    warnings = [f"{doc.ref}: {w}" for doc in docs for w in doc.experiment.warnings]
    for doc in docs:
        try:
            action = await _write(store, doc, current[doc.ref])
        except Refused as exc:  # it changed since the check above: refused all the same
            why = str(exc)
            errors.append(why)
            items.append({"experiment": doc.ref, "kind": doc.experiment.kind, "error": why})
            late = Rejected(why, reason=why, source=doc.source, ref=doc.ref, code=EXIT_REFUSED)
            warnings += await audit_rejection(s, late)
            continue
        lines.append(show.applied(doc.experiment.kind, doc.ref, action))
        items.append({"experiment": doc.ref, "kind": doc.experiment.kind, "action": action})
    if errors:
        return Result(EXIT_REFUSED, "\n".join(lines), {"applied": items}, warnings, errors=errors)
    if not args.wait:
        return Result(EXIT_OK, "\n".join(lines), {"applied": items}, warnings)
    code, more, more_errors = await _wait_running(store, [d.ref for d in docs], args.wait_timeout)
    for item in items:
        item.update(more.get(item["experiment"], {}))
    lines += [m["line"] for m in more.values() if m.get("line")]
    for item in items:
        item.pop("line", None)
    return Result(code, "\n".join(lines), {"applied": items}, warnings, errors=more_errors)


def settled(status: Status) -> bool:
    """Whether apply --wait takes the experiment as picked up by the controller."""
    if status.phase == "Failed":
        return True
    if status.run >= 1 and status.phase in SETTLED:
        return True
    return status.run == 0 and status.phase in BEFORE_FIRST_RUN


async def _wait_running(
    store: ExperimentStore, refs: list[str], timeout: float
) -> tuple[int, dict[str, dict[str, Any]], list[str]]:
    """Wait until the controller runs each experiment (or fails it)."""
    uids: dict[str, str] = {}
    for ref in refs:
        current = await _current(store, ref)
        uids[ref] = current.entry.uid if current and current.entry else ""
    seen: dict[str, Status] = {}
    pending = set(refs)
    deadline = time.monotonic() + timeout
    while True:
        for ref in sorted(pending):
            status = await _status(store, ref, uids[ref])
            if status is None:
                continue
            seen[ref] = status
            if settled(status):
                pending.discard(ref)
        if not pending or time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL_INTERVAL)
    out: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    code = EXIT_OK
    for ref in refs:
        status = seen.get(ref)
        if ref in pending:
            code = EXIT_REFUSED if code == EXIT_REFUSED else EXIT_UNREACHABLE
            if status is None:
                errors.append(f"{ref}: no chaos-controller picked it up within {timeout:g}s")
            else:
                errors.append(
                    f"{ref}: still {status.phase} (run {status.run}) after {timeout:g}s"
                    + (f": {status.message}" if status.message else "")
                )
            out[ref] = {"phase": status.phase if status else None, "settled": False}
        elif status is not None and status.phase == "Failed":
            code = EXIT_REFUSED
            errors.append(f"{ref} failed: {status.message or 'no reason given'}")
            out[ref] = {"phase": "Failed", "message": status.message, "settled": True}
        elif status is not None:
            out[ref] = {
                "phase": status.phase,
                "run": status.run,
                "selected": status.selected,
                "acked": status.acked,
                "missing": status.missing,
                "settled": True,
                "line": show.settled(ref, status),
            }
    return code, out, errors


async def _status(store: ExperimentStore, ref: str, uid: str) -> Status | None:
    """The status of this incarnation of the experiment (a status left by an earlier
    one of the same name has another uid); None if none, or unreadable."""
    try:
        got = await store.get_status(ref)
    except (ValueError, codec.DecodeError):
        return None
    if got is None:
        return None
    status = got[0]
    if uid and status.uid and status.uid != uid:
        return None
    return status


# --- delete ---------------------------------------------------------------------------------


def parse_ref(text: str) -> str:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise UsageError(f"an experiment is NAMESPACE/NAME, got {_clip(text, 100)!r}")
    return text


def refs_from_files(paths: list[str], namespace: str | None) -> list[str]:
    """The experiments the files define, by metadata alone: a manifest this version
    cannot run any more can still be deleted."""
    refs: list[str] = []
    for source in read_sources(paths):
        try:
            raws = _load(source)
        except Rejected as exc:
            raise UsageError(exc.line) from None
        for index, raw in enumerate(raws, 1):
            kind, ref = identity(raw, namespace or "default")
            if ref is None:
                raise UsageError(
                    f"{source.name}: {show.document_label(index, kind, None)}: "
                    "metadata.name is missing"
                )
            if ref not in refs:
                refs.append(ref)
    return refs


@_bus_errors
async def delete(s: Session, args: argparse.Namespace) -> Outcome:
    refs = [parse_ref(r) for r in args.refs]
    if args.files:
        refs += [r for r in refs_from_files(args.files, args.namespace) if r not in refs]
    if not refs:
        raise UsageError("delete needs NAMESPACE/NAME arguments or -f FILE")
    store = await _store(s, create=False)
    errors: list[str] = []
    marked: list[str] = []
    gone_now: list[str] = []
    for ref in refs:
        try:
            if await _mark_deleting(store, ref):
                marked.append(ref)
            else:
                gone_now.append(ref)
        except Refused as exc:
            errors.append(str(exc))
    gone = await _wait_gone(store, marked, args.wait_timeout) if store else set()
    lines = [f"{ref} deleted" for ref in refs if ref in gone or ref in gone_now]
    code = EXIT_REFUSED if errors else EXIT_OK
    late = [ref for ref in marked if ref not in gone]
    for ref in late:
        errors.append(
            f"{ref} marked for deletion; no chaos-controller finished it within "
            f"{args.wait_timeout:g}s"
        )
    if late and code == EXIT_OK:
        code = EXIT_UNREACHABLE
    data = {
        "deleted": [r for r in refs if r in gone or r in gone_now],
        "pending": late,
        "errors": errors,
    }
    return Result(code, "\n".join(lines), data, errors=errors)


async def _mark_deleting(store: ExperimentStore | None, ref: str) -> bool:
    """Set ``deleting``; True if the controller must now finish it, False if it is gone
    already. Raises Refused for an unknown experiment."""
    for _ in range(CAS_ATTEMPTS):
        current = await _current(store, ref) if store else None
        if current is None:
            raise Refused(f"no experiment {ref}")
        assert store is not None
        if current.entry is None:
            # Unreadable: no controller runs it, so none would ever remove it.
            await store.delete_spec(ref)
            return False
        if current.entry.source != "chaosctl":
            raise Refused(
                f"{ref} comes from Kubernetes: delete the object in the cluster "
                "(chaosctl would see it come back)"
            )
        if current.entry.deleting:
            return True
        try:
            await store.update_spec(
                ref, dataclasses.replace(current.entry, deleting=True), current.revision
            )
            return True
        except StaleWrite:
            continue
    raise Refused(f"{ref} kept changing while chaosctl marked it; try again")


async def _wait_gone(store: ExperimentStore, refs: list[str], timeout: float) -> set[str]:
    deadline = time.monotonic() + timeout
    gone: set[str] = set()
    while True:
        for ref in refs:
            if ref not in gone and await _current(store, ref) is None:
                gone.add(ref)
        if len(gone) == len(refs) or time.monotonic() >= deadline:
            return gone
        await asyncio.sleep(POLL_INTERVAL)


# --- experiments and describe --------------------------------------------------------------


def row(
    ref: str,
    entry: SpecEntry | None,
    error: str | None,
    status: Status | None,
    status_error: str | None,
) -> dict[str, Any]:
    """One experiment as ``chaosctl experiments --json`` prints it (and the table shows it)."""
    out: dict[str, Any] = {"experiment": ref, "error": error}
    if entry is not None:
        kind = entry.manifest.get("kind")
        out.update(
            kind=kind if isinstance(kind, str) else None,
            source=entry.source,
            actor=entry.actor,
            applied_at=entry.time,
            paused=entry.paused,
            deleting=entry.deleting,
            uid=entry.uid,
        )
    out["status_error"] = status_error
    out["status"] = status.to_wire() if status is not None else None
    if status is not None:
        out.update(
            phase=status.phase,
            run=status.run,
            selected=status.selected,
            acked=status.acked,
            missing=status.missing,
            started_at=status.started_at,
            ends_at=status.ends_at,
            next_run=status.next_run,
            message=status.message,
        )
    return out


@_bus_errors
async def list_experiments(s: Session, args: argparse.Namespace) -> Outcome:
    store = await _store(s, create=False)
    rows: list[dict[str, Any]] = []
    if store is not None:
        specs, bad = await store.specs()
        statuses, bad_status = await store.statuses()
        for ref in sorted(set(specs) | set(bad)):
            if args.namespace and ref.partition("/")[0] not in args.namespace:
                continue
            rows.append(
                row(ref, specs.get(ref), bad.get(ref), statuses.get(ref), bad_status.get(ref))
            )
    return Result(EXIT_OK, show.experiments(rows, time.time()), rows)


@_bus_errors
async def describe(s: Session, args: argparse.Namespace) -> Outcome:
    ref = parse_ref(args.ref)
    store = await _store(s, create=False)
    current = await _current(store, ref) if store else None
    if current is None or store is None:
        raise Refused(f"no experiment {ref}")
    if current.entry is None:
        raise Refused(f"{ref}: its entry is unreadable: {current.error}")
    entry = current.entry
    experiment: Experiment | None = None
    spec_error: str | None = None
    try:
        experiment = parse_manifest(entry.manifest, default_namespace=ref.partition("/")[0])
    except Exception as exc:
        spec_error = str(exc) or type(exc).__name__
    status: Status | None = None
    status_error: str | None = None
    try:
        got = await store.get_status(ref)
        status = got[0] if got else None
    except (ValueError, codec.DecodeError) as exc:
        status_error = str(exc)
    events = await experiment_events(s, ref)
    text = show.describe(
        ref, entry, experiment, spec_error, status, status_error, events, time.time()
    )
    data = {
        "experiment": ref,
        "spec": entry.to_wire(),
        "parsed": experiment.to_wire() if experiment else None,
        "spec_error": spec_error,
        "status": status.to_wire() if status else None,
        "status_error": status_error,
        "events": events,
    }
    return Result(EXIT_OK, text, data)


# --- pause and resume ------------------------------------------------------------------------


@_bus_errors
async def pause(s: Session, args: argparse.Namespace) -> Outcome:
    return await _set_paused(s, args, True)


@_bus_errors
async def resume(s: Session, args: argparse.Namespace) -> Outcome:
    return await _set_paused(s, args, False)


async def _set_paused(s: Session, args: argparse.Namespace, paused: bool) -> Outcome:
    ref = parse_ref(args.ref)
    store = await _store(s, create=False)
    uid = await _flip(store, ref, paused)
    assert store is not None
    verb = "paused" if paused else "resumed"
    status = await _wait_phase(store, ref, uid, paused, args.wait_timeout)
    if status is None:
        last = await _status(store, ref, uid)
        now = f" (it is {last.phase})" if last else ""
        message = (
            f"{ref} marked {'paused' if paused else 'to resume'}; no chaos-controller "
            f"{verb} it within {args.wait_timeout:g}s{now}"
        )
        data = {"experiment": ref, "paused": paused, "phase": last.phase if last else None}
        return Result(EXIT_UNREACHABLE, "", data, errors=[message])
    if not paused:
        text = f"{ref} resumed (now {status.phase})"
    elif status.phase == "Paused":
        text = f"{ref} paused"
    else:
        text = f"{ref} marked paused; it is {status.phase}, so nothing was left to pause"
    return Result(EXIT_OK, text, {"experiment": ref, "paused": paused, "phase": status.phase})


async def _flip(store: ExperimentStore | None, ref: str, paused: bool) -> str:
    """Set ``paused`` by compare-and-set; the entry's uid."""
    for _ in range(CAS_ATTEMPTS):
        current = await _current(store, ref) if store else None
        if current is None or store is None:
            raise Refused(f"no experiment {ref}")
        if current.entry is None:
            raise Refused(f"{ref}: its entry is unreadable: {current.error}")
        if current.entry.deleting:
            raise Refused(f"{ref} is being deleted")
        if current.entry.paused == paused:
            return current.entry.uid
        try:
            await store.update_spec(
                ref, dataclasses.replace(current.entry, paused=paused), current.revision
            )
            return current.entry.uid
        except StaleWrite:
            continue
    raise Refused(f"{ref} kept changing while chaosctl wrote it; try again")


async def _wait_phase(
    store: ExperimentStore, ref: str, uid: str, paused: bool, timeout: float
) -> Status | None:
    """Wait until the controller paused (or resumed) it; a finished or failed experiment
    has nothing left to pause, so it counts as done."""
    deadline = time.monotonic() + timeout
    while True:
        status = await _status(store, ref, uid)
        if status is not None:
            if status.phase in ("Finished", "Failed"):
                return status
            if (status.phase == "Paused") == paused:
                return status
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(POLL_INTERVAL)
