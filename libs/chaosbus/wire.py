"""The shapes of the replies a chaosfs sidecar sends, for the sender and the receiver.

A sidecar answers every command with a msgpack map. These ``TypedDict`` classes say
which keys each reply carries and what they hold, so that the type checker checks the
sidecar that builds a reply (``chaosfs.commands``) and chaosctl that reads it
(``chaosctl.client`` and ``chaosctl.output``) against one description. At run time
they are plain dicts: nothing here converts or validates what arrives.

Every reply has the envelope (``ok``, ``pod``, ``v``, the protocol version); a refusal
adds ``error``, a sentence for the operator. Which other keys come depends on the
command's ``op`` (see ``chaosbus.protocol``).
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class Envelope(TypedDict):
    ok: bool
    pod: str  # "namespace/name" of the sidecar that answered
    v: int  # the protocol version


class ErrorReply(Envelope):
    error: str


class Identity(TypedDict):
    """Who the sidecar is: in ``ping`` and ``status`` replies and its announcements."""

    namespace: str
    name: str
    mountpoint: str
    original: str
    pidfile: str | None
    pid: int
    version: str
    labels: dict[str, str]


class PingReply(Envelope, Identity):
    pass


class RuleStats(TypedDict, total=False):
    matched: int
    fired: int
    last_fired: float | None
    quota_used: int


# A rule as it travels (``FaultRule.to_wire``): its fields depend on its action, so it
# stays an open map; ``id`` and ``action`` are always there.
RuleWire = dict[str, Any]
# A rule in force as ``status`` shows it: the wire form plus ``stats`` (RuleStats),
# ``spent`` and, for a power-cut rule that fired, ``last_cut``.
RuleView = dict[str, Any]


class SetReply(Envelope):
    rules: list[RuleWire]  # the rules set, as the sidecar understood them


class RecoverReply(Envelope):
    recovered: list[str]  # ids of the rules taken out


class MethodsReply(Envelope):
    methods: list[str]


class InjectedReply(Envelope):
    injected: bool


class LazyStatus(TypedDict, total=False):
    """Lazy mode's block of a status reply; only ``enabled`` when lazy mode is off."""

    enabled: bool
    max_bytes: int
    held_bytes: int
    unsynced_files: int
    unsynced_bytes: int
    pending_dir_ops: int
    early_durable_dir_ops: int
    expired_dir_ops: int
    trash_entries: int
    expire: float
    flush_interval: float
    max_file_size: int
    stats: dict[str, int]


class RuleList(TypedDict):
    """What ``fault list`` reads of a status reply."""

    pod: str
    rules: list[RuleView]
    rules_omitted: NotRequired[int]  # rules cut to fit the bus's payload limit


class StatusReply(Envelope, Identity):
    uptime: float  # seconds since the sidecar started
    injected: bool
    rules: list[RuleView]
    managed: list[str]  # rule ids desired state put in force
    events_dropped: int
    lazy: LazyStatus
    rules_omitted: NotRequired[int]
    # Added by chaosctl, never sent: desired state against the rules in force, rule ids
    # under "missing", "unexpected" and "different".
    drift: NotRequired[dict[str, list[str]]]


# --- lazy mode -----------------------------------------------------------------------


class DirOpView(TypedDict, total=False):
    kind: str
    path: str
    to: str | None


class FileBytes(TypedDict, total=False):
    files: dict[str, int]  # path: bytes
    bytes: int  # in all


class SizeChange(TypedDict, total=False):
    now: int
    after_cut: int


class PendingWrite(TypedDict, total=False):
    """One unsynced write (``off``, ``len``) or truncate (``truncate``: the new size),
    numbered from 1 (``i``) as ``torn-write --persist`` takes them."""

    i: int
    off: int
    len: int
    truncate: int


class WriteLog(TypedDict, total=False):
    count: int  # unsynced writes in all
    ops: list[PendingWrite]  # the first of them


class UnsyncedReport(TypedDict, total=False):
    """What a power cut would lose now (``report-unsynced``)."""

    model: str
    files: dict[str, int]  # path: bytes a cut would change
    bytes: int
    with_metadata: FileBytes  # the same for a cut with --metadata
    sizes: dict[str, SizeChange]
    writes: dict[str, WriteLog]
    dir_ops: list[DirOpView]


class LostReport(TypedDict, total=False):
    """What a cut dropped (``lose-unsynced``, and the loss of a ``power-cut``)."""

    files: dict[str, int]
    bytes: int
    dir_ops: list[DirOpView]
    model: str
    failures: list[str]


class TornReport(TypedDict, total=False):
    """What a torn write-back kept and lost, per file and in all."""

    files: dict[str, dict[str, int]]  # path: {"kept": n, "lost": n}
    kept: int
    lost: int
    warnings: list[str]
    failures: list[str]


class Process(TypedDict):
    pid: int
    comm: str


class UnsyncedReply(Envelope):
    unsynced: UnsyncedReport


class LostReply(Envelope):
    lost: LostReport


class TornReply(Envelope):
    torn: TornReport


class PowerCutReply(Envelope):
    killed: list[Process]
    survivors: list[Process]  # still alive after the signal: not the cut asked for
    lost: LostReport
    torn: NotRequired[TornReport]  # when the cut tore before it lost


class LazyReply(TypedDict, total=False):
    """Any lazy-mode reply, as a reader that tells them apart by their keys sees it."""

    ok: bool
    pod: str
    v: int
    unsynced: UnsyncedReport
    lost: LostReport
    torn: TornReport
    killed: list[Process]
    survivors: list[Process]


Reply = (
    ErrorReply
    | PingReply
    | SetReply
    | RecoverReply
    | MethodsReply
    | InjectedReply
    | StatusReply
    | UnsyncedReply
    | LostReply
    | TornReply
    | PowerCutReply
)
