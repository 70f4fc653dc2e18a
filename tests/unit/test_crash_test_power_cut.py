"""Power-cut rules without a mount: validation, and the engine's cut point.

The engine decides on the FUSE thread: at the rule's operation it marks the cut
point and hands the cut over (here to a list, where chaosfs hands it to its bus
thread); from then on, until ``cut_done``, every operation fails with EIO, so
nothing after the cut point reaches the disk. ``before`` fails the triggering
operation too; ``after`` lets it finish, including any further question its
handler asks in the same trio step.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio

from chaosbus.rules import FaultRule, RuleError
from chaosfs.faults import FaultEngine, PowerCut
from chaosfs.inodes import InodeTable


def rule(**wire: object) -> FaultRule:
    return FaultRule.from_wire({"id": "cut", "action": "power-cut", **wire})


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ({"when": "later"}, "when must be before or after"),
        ({"signal": "NOPE"}, "signal must be a name"),
        ({"signal": 0}, "signal must be"),
        ({"signal": True}, "signal must be"),
        ({"metadata": "yes"}, "metadata must be true or false"),
    ],
)
def test_bad_power_cut_fields_are_refused(wire, message):
    with pytest.raises(RuleError, match=message):
        rule(**wire)


def test_cut_fields_belong_to_power_cut_rules_only():
    for name, value in (("when", "after"), ("signal", "KILL"), ("metadata", True)):
        with pytest.raises(RuleError, match="only applies to the power-cut action"):
            FaultRule.from_wire({"action": "errno", "errno": "EIO", name: value})


def test_a_power_cut_rule_round_trips_with_its_defaults():
    made = rule(methods=["fsync"], path="wal/*", after=2, count=1, signal="term")
    assert (made.when, made.signal, made.metadata) == ("before", 15, False)
    assert FaultRule.from_wire(made.to_wire()) == made
    assert made.to_wire()["when"] == "before"


def test_a_cut_carries_its_model_and_tear_to_the_power_cut_command():
    made = rule(model="strict", metadata=True, tear={"persist": [3, 1], "align": 512})
    assert made.cut_command() == {
        "op": "power-cut",
        "signal": 9,
        "metadata": True,
        "model": "strict",
        "tear": {"align": 512, "persist": [3, 1]},
    }
    assert FaultRule.from_wire(made.to_wire()) == made
    hash(made)  # rules stay hashable, tear and all
    for bad, message in (
        ({"model": "ext4"}, "model must be one of journal, strict"),
        ({"tear": {"slice": 1}}, "unknown tear field"),
        ({"tear": {}}, "tear must be a map"),
        ({"tear": {"seed": 1.5}}, "tear seed must be"),
    ):
        with pytest.raises(RuleError, match=message):
            rule(**bad)


def test_an_invalid_cut_is_refused_when_the_rule_is_set(mount):
    # Two ways to choose the surviving writes: the power-cut command takes one.
    with pytest.raises(RuleError, match="its power cut"):
        mount.engine.set_rules([rule(tear={"seed": 1, "keep": 10})])


class Mount:
    """A real directory and inode table, an engine whose cuts land in ``cuts``."""

    def __init__(self, root: Path, accept: bool = True) -> None:
        (root / "wal").mkdir()
        (root / "wal" / "000001").write_bytes(b"")
        self.table = InodeTable(os.open(root, os.O_PATH | os.O_DIRECTORY))
        self.engine = FaultEngine(self.table)
        self.engine.power_cuts = True
        self.cuts: list[PowerCut] = []
        self.accept = accept
        self.engine.on_power_cut = self._handoff
        st = os.stat("wal", dir_fd=self.table.root.fd)
        self.wal = self.table.attach(self.table.root, b"wal", st)
        st = os.stat("000001", dir_fd=self.wal.fd)
        self.log = self.table.attach(self.wal, b"000001", st)

    def _handoff(self, cut: PowerCut) -> bool:
        self.cuts.append(cut)
        return self.accept

    def errno_of(self, method: str = "fsync") -> int:
        decision = self.engine.for_inode(method, self.log, pid=42)
        return decision.errno if decision is not None else 0


@pytest.fixture
def mount(tmp_path: Path) -> Mount:
    return Mount(tmp_path)


@pytest.mark.parametrize(("when", "third"), [("before", errno.EIO), ("after", 0)])
def test_the_third_fsync_cuts_and_everything_after_it_fails(mount, when, third):
    mount.engine.set_rules([rule(methods=["fsync"], path="wal/*", after=2, count=1, when=when)])
    assert [mount.errno_of(), mount.errno_of()] == [0, 0]
    assert mount.cuts == []
    assert mount.errno_of() == third  # before: the fsync never happens; after: it does
    (cut,) = mount.cuts
    assert (cut.operation, cut.method, cut.path, cut.pid) == (3, "fsync", "wal/000001", 42)
    # Past the cut point: every operation, of any kind, on any path, fails.
    assert mount.errno_of("write") == errno.EIO
    assert mount.engine.for_path("create", mount.table.root, b"new", 1).errno == errno.EIO
    assert cut.refused == 2
    mount.engine.cut_done(cut, {"killed": [{"pid": 42, "comm": "app"}], "survivors": []})
    assert mount.errno_of() == 0 and mount.errno_of("write") == 0  # spent: count 1
    (described,) = mount.engine.describe()
    assert described["spent"] and described["stats"]["fired"] == 1
    last = described["stats"]["last_cut"]
    assert last["operation"] == 3 and last["refused"] == 2 and last["when"] == when
    assert len(mount.cuts) == 1


def test_a_cut_nobody_can_carry_out_closes_nothing(tmp_path):
    mount = Mount(tmp_path, accept=False)
    mount.engine.set_rules([rule(methods=["fsync"], when="before")])
    assert mount.errno_of() == 0  # no cut, so no dead disk either
    assert mount.engine.cutting is None and mount.errno_of("write") == 0


def test_a_dry_run_counts_and_cuts_nothing(mount):
    mount.engine.set_rules([rule(methods=["fsync"], dry_run=True)])
    assert mount.errno_of() == 0 and mount.cuts == []
    assert mount.engine.describe()[0]["stats"]["fired"] == 1


def test_power_cut_rules_need_a_lazy_mount(mount):
    mount.engine.power_cuts = False
    with pytest.raises(RuleError, match="needs lazy mode"):
        mount.engine.set_rules([rule()])
    errno_rule = FaultRule.from_wire({"id": "e", "action": "errno", "errno": "EIO"})
    changed, _ = mount.engine.converge([rule(), errno_rule])
    assert [r.id for r in changed] == ["e"]  # desired state still brings the rest


def test_after_spares_the_triggering_step_only(mount):
    """A handler may ask the engine twice for one request (setattr: once per field);
    with ``after`` its operation finishes whole, and the next step is past the cut."""
    mount.engine.set_rules([rule(methods=["truncate"], when="after")])
    seen: list[int] = []

    async def handler() -> None:
        seen.append(mount.errno_of("truncate"))  # triggers the cut
        seen.append(mount.errno_of("chmod"))  # same request, same step: spared
        await trio.sleep(0)
        seen.append(mount.errno_of("chmod"))  # a later step: powerless

    trio.run(handler)
    assert seen == [0, 0, errno.EIO]
    assert len(mount.cuts) == 1
