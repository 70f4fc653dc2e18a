"""What the sidecar does with a command, apart from the bus that carried it.

``handle`` takes the bytes of one command and returns an ``Outcome``: the reply to
send, the audit events and log lines to record, and the effects the control plane
must carry out before it replies (drop the kernel's caches of files a changed rule
covers, drop exact kernel entries a power cut changed, wake the loops that watch the
rule set). It changes the fault engine itself (a rule set is swapped in one
assignment), and reaches lazy mode's data only through a ``LazyActions`` capability,
which a plain mount does not have (None): then every lazy-mode command is refused.

Nothing here knows about NATS, threads or the FUSE loop, so the handler is called
directly in unit tests, with a manual clock and a stand-in for lazy mode. Which
function answers which op is one table, ``HANDLERS``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from chaosbus import __version__, codec, protocol, wire
from chaosbus.clock import Clock
from chaosbus.globs import PathPattern
from chaosbus.protocol import PROTOCOL_VERSION, CommandError, LazyAction
from chaosbus.rules import METHODS, FaultRule, RuleError

from . import parsed
from .config import Config
from .faults import FaultEngine

LAZY_OFF = "lazy mode is off: start chaosfs with -lazy"

# A kernel entry to forget: (inode id, parent's inode id, name); 0 for "none".
Invalidation = tuple[int, int, bytes]


class MountClosing(CommandError):
    """The FUSE loop has ended: nothing on the mount can be asked or changed any more."""


class LazyActions(Protocol):
    """Lazy mode's operations as the handler needs them, each awaited.

    The sidecar's implementation runs each one on the FUSE thread between two file
    requests (they read and change what the mount holds); a unit test passes a
    stand-in. ``MountClosing`` says the mount is gone.
    """

    async def status(self) -> wire.LazyStatus: ...

    async def unsynced(self, regex: PathPattern, model: str) -> dict[str, Any]:
        """What a power cut would lose now (the report-unsynced reply's body)."""
        ...

    async def stop_writers(self, signal: int) -> tuple[list[wire.Process], list[wire.Process]]:
        """Signal every process using the mount, wait for them to die: (killed, survivors)."""
        ...

    async def tear(
        self,
        regex: PathPattern,
        seed: int | str | None,
        keep: int | None,
        whole_writes: bool,
        align: int,
        persist: tuple[int, ...] | None,
        force: bool,
    ) -> tuple[dict[str, Any], list[Invalidation]]:
        """Tear the matching files' unsynced writes: (report, kernel entries to drop)."""
        ...

    async def lose(
        self, regex: PathPattern, metadata: bool, model: str
    ) -> tuple[dict[str, Any], list[Invalidation]]:
        """Drop unsynced data (and with ``metadata`` directory operations): (report,
        kernel entries to drop)."""
        ...


@dataclass(frozen=True)
class Sidecar:
    """What the handler works with: the sidecar's settings, its fault engine, the
    clock it reads, lazy mode (None on a plain mount) and when it started."""

    config: Config
    engine: FaultEngine
    clock: Clock
    lazy: LazyActions | None
    started: float  # the clock's monotonic reading at start: uptime counts from it
    pid: int = field(default_factory=os.getpid)

    @property
    def pod(self) -> str:
        return self.config.pod_ref


@dataclass(frozen=True)
class LogLine:
    level: str  # "info", "warning" or "error"
    event: str
    fields: dict[str, Any]


@dataclass
class Outcome:
    """One command's result, for the control plane to carry out in this order: wake the
    loops (``rules_moved``), drop kernel caches (``drop_caches``, ``invalidate``), log,
    audit, then send ``reply``."""

    reply: wire.Reply
    op: str  # for the commands metric: the op, or "invalid" for an unreadable command
    result: str = "ok"  # "ok", "rejected" (the command was wrong) or "error" (we were)
    audits: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    logs: list[LogLine] = field(default_factory=list)
    drop_caches: list[FaultRule] = field(default_factory=list)
    invalidate: list[Invalidation] = field(default_factory=list)
    rules_moved: bool = False


@dataclass(frozen=True)
class Request:
    command: parsed.Command
    fleet: bool  # came over the fleet subject

    @property
    def body(self) -> dict[str, Any]:
        return self.command.body

    @property
    def actor(self) -> str:
        return str(self.body.get("actor") or "unknown")


Handler = Callable[[Sidecar, Request], Awaitable[Outcome]]


async def handle(sidecar: Sidecar, data: bytes, *, fleet: bool, subject: str) -> Outcome | None:
    """The outcome of one command, or None when a fleet command's target leaves this
    sidecar out (it stays silent, as a sidecar that never heard it would).

    A wrong command is refused with a sentence and changes nothing; a failure of the
    sidecar's own becomes an "internal error" reply, never a silence.
    """
    command: parsed.Command | None = None
    try:
        # Decoded once per process (see parsed): a broadcast reaches every agent of
        # bench/agents.py with the same bytes.
        command = parsed.command(data, fleet)
        target = command.target
        config = sidecar.config
        if target is not None and not target.matches(config.namespace, config.pod, config.labels):
            return None
        return await HANDLERS[command.op](sidecar, Request(command, fleet))
    except (codec.DecodeError, CommandError, RuleError) as exc:
        actor = command.body.get("actor") if command is not None else None
        return Outcome(
            error_reply(sidecar.pod, str(exc)),
            op=command.op if command is not None else "invalid",
            result="rejected",
            logs=[LogLine("warning", "command_rejected", {"reason": str(exc), "bytes": len(data)})],
            audits=[
                (
                    "rule.rejected",
                    {"reason": str(exc), "actor": str(actor or "unknown"), "subject": subject},
                )
            ],
        )
    except Exception as exc:
        return Outcome(
            error_reply(sidecar.pod, f"internal error: {exc}"),
            op=command.op if command is not None else "invalid",
            result="error",
            logs=[LogLine("error", "command_failed", {"exc_info": exc})],
        )


def error_reply(pod: str, message: str) -> wire.ErrorReply:
    return wire.ErrorReply(ok=False, pod=pod, v=PROTOCOL_VERSION, error=message)


def identity(config: Config, pid: int) -> wire.Identity:
    """Who this sidecar is; every reply and event adds the ``pod`` key itself."""
    return wire.Identity(
        namespace=config.namespace,
        name=config.pod,
        mountpoint=config.mountpoint,
        original=config.original,
        pidfile=config.pidfile,
        pid=pid,
        version=__version__,
        labels=config.labels,
    )


# --- rules ---------------------------------------------------------------------------


async def _set(sidecar: Sidecar, request: Request) -> Outcome:
    # Parsed and put in wire form once per process; shared, never changed. A ttl
    # counts from this sidecar's clock.
    rules, wires = request.command.rules(sidecar.clock.wall())
    changed = sidecar.engine.set_rules(rules)
    actor = request.actor
    return Outcome(
        wire.SetReply(ok=True, pod=sidecar.pod, v=PROTOCOL_VERSION, rules=wires),
        op="set",
        logs=[LogLine("info", "rules_set", {"rules": [r.id for r in rules], "actor": actor})],
        audits=[("rule.set", {"actor": actor, "fleet": request.fleet, "rules": wires})],
        drop_caches=changed,
        rules_moved=True,
    )


async def _recover(sidecar: Sidecar, request: Request) -> Outcome:
    engine = sidecar.engine
    how, value = protocol.parse_recover(request.body)
    if how == "all":
        gone = engine.recover_all()
    elif how == "id":
        gone = engine.recover_id(value or "")
        if not gone and not request.fleet:  # a fleet recover also reaches pods without it
            raise CommandError(f"no rule with id {value!r}")
    elif how == "ids":  # an experiment's rules: recover those held, no error for others
        gone = engine.recover_ids(value)
    else:
        gone = engine.recover_method(value or "")
    ids = [r.id for r in gone]
    return Outcome(
        wire.RecoverReply(ok=True, pod=sidecar.pod, v=PROTOCOL_VERSION, recovered=ids),
        op="recover",
        logs=[LogLine("info", "rules_recovered", {"how": how, "value": value, "rules": ids})],
        audits=[
            (
                "rule.recovered",
                {
                    "actor": request.actor,
                    "fleet": request.fleet,
                    "how": how,
                    "value": value,
                    "rules": ids,
                },
            )
        ],
        drop_caches=gone,
        rules_moved=True,
    )


# --- questions -------------------------------------------------------------------------


async def _methods(sidecar: Sidecar, request: Request) -> Outcome:
    reply = wire.MethodsReply(ok=True, pod=sidecar.pod, v=PROTOCOL_VERSION, methods=list(METHODS))
    return Outcome(reply, op="methods")


async def _injected(sidecar: Sidecar, request: Request) -> Outcome:
    held = bool(sidecar.engine.rules.rules)
    reply = wire.InjectedReply(ok=True, pod=sidecar.pod, v=PROTOCOL_VERSION, injected=held)
    return Outcome(reply, op="injected")


async def _status(sidecar: Sidecar, request: Request) -> Outcome:
    engine = sidecar.engine
    lazy: wire.LazyStatus = (
        {"enabled": False} if sidecar.lazy is None else await sidecar.lazy.status()
    )
    who = identity(sidecar.config, sidecar.pid)
    reply = wire.StatusReply(
        ok=True,
        pod=sidecar.pod,
        v=PROTOCOL_VERSION,
        namespace=who["namespace"],
        name=who["name"],
        mountpoint=who["mountpoint"],
        original=who["original"],
        pidfile=who["pidfile"],
        pid=who["pid"],
        version=who["version"],
        labels=who["labels"],
        uptime=sidecar.clock.monotonic() - sidecar.started,
        injected=bool(engine.rules.rules),
        rules=engine.describe(),
        managed=sorted(engine.managed),
        events_dropped=engine.events_dropped,
        lazy=lazy,
    )
    return Outcome(reply, op="status")


async def _ping(sidecar: Sidecar, request: Request) -> Outcome:
    reply = wire.PingReply(
        ok=True, pod=sidecar.pod, v=PROTOCOL_VERSION, **identity(sidecar.config, sidecar.pid)
    )
    return Outcome(reply, op="ping")


# --- lazy mode: power cuts -------------------------------------------------------------


async def _lazy(sidecar: Sidecar, request: Request) -> Outcome:
    return await lazy_action(sidecar, request.body, request.actor, fleet=request.fleet)


async def lazy_action(
    sidecar: Sidecar, body: dict[str, Any], actor: str, *, fleet: bool
) -> Outcome:
    """A report-unsynced, lose-unsynced, torn-write or power-cut command; also what a
    power-cut rule's cut does (actor ``rule:ID``). Raises CommandError if refused."""
    lazy = sidecar.lazy
    if lazy is None:
        raise CommandError(LAZY_OFF)
    action = protocol.parse_lazy(body)
    where = {"actor": actor, "fleet": fleet, "path": action.path}
    # The directory-operation model of this cut: the command's, or this sidecar's.
    model = action.model or sidecar.config.lazy_metadata
    pod = sidecar.pod
    if action.op == "report-unsynced":
        report = await lazy.unsynced(action.path_regex, model)
        audit = {
            **where,
            "model": model,
            "files": len(report["files"]),
            "bytes": report["bytes"],
            "dir_ops": len(report["dir_ops"]),
        }
        return Outcome(
            wire.UnsyncedReply(ok=True, pod=pod, v=PROTOCOL_VERSION, unsynced=_typed(report)),
            op=action.op,
            audits=[("unsynced.reported", audit)],
        )
    killed: list[wire.Process] = []
    survivors: list[wire.Process] = []
    if action.op == "power-cut":
        # Stop the writers first: once they are dead nothing new can become
        # unsynced between the kill and the loss.
        killed, survivors = await lazy.stop_writers(action.signal)
    torn: dict[str, Any] | None = None
    targets: list[Invalidation] = []
    if action.tear is not None:
        tear = action.tear
        torn, targets = await lazy.tear(
            action.path_regex,
            tear.seed,
            tear.keep,
            tear.whole_writes,
            tear.align,
            tear.persist,
            # A cut's own kill stopped the writers; one it could not stop is warned of.
            action.force or action.op == "power-cut",
        )
    if action.op == "torn-write":
        report = torn or {}
    else:
        report, lost_targets = await lazy.lose(action.path_regex, action.metadata, model)
        targets += lost_targets
    return _lazy_outcome(sidecar, action, model, where, report, torn, killed, survivors, targets)


def _lazy_outcome(
    sidecar: Sidecar,
    action: LazyAction,
    model: str,
    where: dict[str, Any],
    report: dict[str, Any],
    torn: dict[str, Any] | None,
    killed: list[wire.Process],
    survivors: list[wire.Process],
    targets: list[Invalidation],
) -> Outcome:
    """The reply, log line and audit event of a lose, tear or cut that was done.
    ``targets``: what the kernel caches of those files and names must be dropped, so
    that the next read sees what survived, not the page cache's memory of what did not."""
    pod = sidecar.pod
    figures = {"files": report["files"], "dir_ops": len(report.get("dir_ops", []))}
    tear_fields: dict[str, Any] = {}
    if action.tear is not None:
        tear_fields = {
            "seed": action.tear.seed,
            "keep": action.tear.keep,
            "persist": list(action.tear.persist) if action.tear.persist else None,
        }
    if action.op == "torn-write":
        return Outcome(
            wire.TornReply(ok=True, pod=pod, v=PROTOCOL_VERSION, torn=_typed(report)),
            op=action.op,
            logs=[LogLine("info", "unsynced_torn", {**tear_fields, **where, **figures})],
            audits=[
                (
                    "unsynced.torn",
                    {
                        **where,
                        **tear_fields,
                        "force": action.force,
                        "kept": report["kept"],
                        "lost": report["lost"],
                        "warnings": report.get("warnings", []),
                        **figures,
                    },
                )
            ],
            invalidate=targets,
        )
    if action.op == "power-cut":
        cut = wire.PowerCutReply(
            ok=True,
            pod=pod,
            v=PROTOCOL_VERSION,
            killed=killed,
            survivors=survivors,
            lost=_typed(report),
        )
        if torn is not None:
            cut["torn"] = _typed(torn)
        return Outcome(
            cut,
            op=action.op,
            logs=[
                LogLine(
                    "warning",
                    "power_cut",
                    {"killed": killed, "survivors": len(survivors), **where, **figures},
                )
            ],
            audits=[
                (
                    "power.cut",
                    {
                        **where,
                        "signal": action.signal,
                        "metadata": action.metadata,
                        "model": model,
                        "killed": killed,
                        "survivors": survivors,
                        "bytes": report["bytes"],
                        "torn": None
                        if torn is None
                        else {"kept": torn["kept"], "lost": torn["lost"]},
                        **tear_fields,
                        **figures,
                    },
                )
            ],
            invalidate=targets,
        )
    return Outcome(
        wire.LostReply(ok=True, pod=pod, v=PROTOCOL_VERSION, lost=_typed(report)),
        op=action.op,
        logs=[
            LogLine(
                "warning",
                "unsynced_lost",
                {"metadata": action.metadata, "model": model, **where, **figures},
            )
        ],
        audits=[
            (
                "unsynced.lost",
                {
                    **where,
                    "metadata": action.metadata,
                    "model": model,
                    "bytes": report["bytes"],
                    **figures,
                },
            )
        ],
        invalidate=targets,
    )


def _typed(report: dict[str, Any]) -> Any:
    """A report lazy mode built as a plain dict, as the reply type that describes it."""
    return report


HANDLERS: dict[str, Handler] = {
    "set": _set,
    "recover": _recover,
    "methods": _methods,
    "injected": _injected,
    "status": _status,
    "ping": _ping,
    **dict.fromkeys(protocol.LAZY_OPS, _lazy),
}
