"""Running chaosfs: mount, announce, serve until told to stop, clean up."""

from __future__ import annotations

import os
import resource
import select
import signal
import sys
import types
from typing import Any

import pyfuse3
import trio

from chaosbus import __version__
from chaosbus.logs import configure

from . import metrics
from .config import Config
from .control import BusControl, MountedLazy
from .faults import FaultEngine
from .inodes import InodeTable
from .lazyfs import LazyOperations
from .mounting import (
    StartError,
    prepare_mountpoint,
    raise_read_ahead,
    remove_pidfile,
    wait_until_mounted,
    write_pidfile,
)
from .passthrough import ChaosOperations

# --- the FUSE request loop's scheduling -------------------------------------------
#
# pyfuse3's request loop lets one task at a time read the FUSE device (a trio.Lock)
# and waits for a request with trio.lowlevel.wait_readable. It keeps a second task
# parked on that lock, so that requests go on being read while a handler waits
# (a latency fault's sleep, a sync on a worker thread). With trio's own lock and
# wait, every request costs two passes through trio's scheduler: one to hand the
# lock to the parked task, which then waits for the device, while the first task
# answers the request and parks in turn; and one for the wait itself, even when a
# request is already there. Together that is about as much CPU as serving a small
# read. pyfuse3 looks these names up in its module attribute ``trio`` (its asyncio
# mode swaps that attribute the same way), so chaosfs gives it a view of trio
# with a lock and a wait that skip the scheduler where nothing needs it:
#
# - the lock goes back to the task that answered the request if that task comes
#   straight back for it; the parked task gets it only when the holder let go and
#   then stopped to wait for something else (checked after every step of a task),
#   which is exactly when a second reader is needed;
# - the wait returns at once when a request is already waiting, up to
#   FAST_PASSES times in a row; then it waits through trio as usual, so that other
#   tasks (a sleep that ended, a finished sync, the control plane's calls onto this
#   thread) get their turn even while requests keep coming.
#
# This leans on how pyfuse3 3.5.0 (the version pyproject pins) uses those names;
# any other version keeps trio's own lock and wait.

FAST_PASSES = 16
LOOP_TESTED_WITH = "3.5.0"  # the pyfuse3 whose request loop the view was written for


class _ReadLock:
    """The FUSE reading role: a lock that its last holder may take again at once."""

    __slots__ = ("_lot", "owner")

    def __init__(self) -> None:
        self.owner: trio.lowlevel.Task | None = None
        self._lot = trio.lowlevel.ParkingLot()

    async def __aenter__(self) -> None:
        if self.owner is None:
            self.owner = trio.lowlevel.current_task()
            return
        await self._lot.park()  # hand_over() made this task the owner before waking it

    async def __aexit__(self, *exc: object) -> None:
        self.owner = None
        if self._lot:
            _HandOver.pending.append(self)

    def hand_over(self) -> None:
        """Give the free lock to the first parked task, if it is still free."""
        if self.owner is None and self._lot:
            self.owner = self._lot.unpark(count=1)[0]


class _HandOver(trio.abc.Instrument):
    """After each step of any task: a read lock left free with tasks waiting for it
    means its holder has stopped elsewhere, so the next waiter reads instead."""

    pending: list[_ReadLock] = []

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.pending:
            locks = list(self.pending)
            self.pending.clear()
            for lock in locks:
                lock.hand_over()


class _FuseWait:
    """trio.lowlevel.wait_readable that returns at once while a request is waiting."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._fd = -1
        self._passes = 0

    async def __call__(self, fd: int) -> None:
        if fd != self._fd:
            if self._fd >= 0:
                self._poll.unregister(self._fd)
            self._poll.register(fd, select.POLLIN)
            self._fd = fd
        if self._passes < FAST_PASSES and self._poll.poll(0):
            self._passes += 1
            return
        self._passes = 0
        await trio.lowlevel.wait_readable(fd)


def fast_fuse_loop() -> bool:
    """Give pyfuse3's request loop the cheaper lock and wait (see above); whether it did."""
    if (
        getattr(pyfuse3, "__version__", None) != LOOP_TESTED_WITH
        or getattr(pyfuse3, "trio", None) is not trio
    ):
        return False  # another pyfuse3, or already switched (its asyncio mode): leave it
    lowlevel = types.SimpleNamespace(
        wait_readable=_FuseWait(),
        current_task=trio.lowlevel.current_task,
        current_trio_token=trio.lowlevel.current_trio_token,
        notify_closing=trio.lowlevel.notify_closing,
    )
    view: Any = types.SimpleNamespace(
        Lock=_ReadLock,
        ClosedResourceError=trio.ClosedResourceError,
        open_nursery=trio.open_nursery,
        from_thread=trio.from_thread,
        lowlevel=lowlevel,
    )
    pyfuse3.trio = view  # type: ignore[attr-defined]
    return True


def _raise_fd_limit() -> None:
    # One O_PATH descriptor per inode the kernel remembers: allow as many as we may.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(config: Config) -> int:
    log = configure("chaosfs", config.log_level).bind(
        pod=config.pod_ref, mountpoint=config.mountpoint
    )
    if config.ignored_addr:
        log.warning(
            "flag_ignored",
            flag="-addr",
            value=config.ignored_addr,
            reason="chaosfs is steered over NATS, not gRPC",
        )
    # The kernel already applied the caller's umask to every mode it passes us.
    os.umask(0)
    _raise_fd_limit()
    try:
        prepare_mountpoint(config.mountpoint, config.pidfile, log)
        root_fd = os.open(config.original, os.O_PATH | os.O_DIRECTORY)
    except (StartError, OSError) as exc:
        log.error("start_failed", error=str(exc))
        print(f"chaosfs: {exc}", file=sys.stderr)
        return 1

    signal.signal(signal.SIGTERM, _remember_signal)
    signal.signal(signal.SIGINT, _remember_signal)
    table = InodeTable(root_fd)
    engine = FaultEngine(table)
    ops: ChaosOperations
    if config.lazy:
        try:
            ops = LazyOperations(
                table,
                engine,
                config.cache_timeout,
                config.lazy_max_bytes,
                log,
                expire=config.lazy_expire,
                interval=config.lazy_flush_interval,
            )
        except OSError as exc:
            log.error("start_failed", error=f"lazy mode's trash directory: {exc}")
            print(f"chaosfs: cannot prepare lazy mode in {config.original}: {exc}", file=sys.stderr)
            return 1
        log.info(
            "lazy_mode",
            max_bytes=config.lazy_max_bytes,
            metadata=config.lazy_metadata,
            expire=config.lazy_expire,
            flush_interval=config.lazy_flush_interval,
        )
    else:
        ops = ChaosOperations(table, engine, config.cache_timeout)
    options = set(pyfuse3.default_options)
    options |= {"fsname=chaosfs", "subtype=chaosfs", "allow_other", "default_permissions"}
    fast_fuse_loop()
    try:
        pyfuse3.init(ops, config.mountpoint, options)
    except RuntimeError as exc:
        log.error("mount_failed", error=str(exc))
        print(f"chaosfs: cannot mount {config.mountpoint}: {exc}", file=sys.stderr)
        return 1
    log.info("mounted", original=config.original, version=__version__)
    try:
        trio.run(_serve, config, ops, engine, log)
    finally:
        pyfuse3.close(unmount=True)
        if isinstance(ops, LazyOperations):
            ops.make_all_durable()  # a clean stop loses nothing, as an unmount would not
        if config.pidfile:
            remove_pidfile(config.pidfile)
        table.close_all()
    log.info("stopped")
    return 0


async def _serve(config: Config, ops: ChaosOperations, engine: FaultEngine, log) -> None:
    bus: BusControl | None = None
    # Receive signals before anything is announced: a SIGTERM right after the
    # pidfile appears must still unmount cleanly, not kill the process mid-way.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def fuse_loop() -> None:
                await pyfuse3.main()
                nursery.cancel_scope.cancel()  # unmounted from outside: stop too

            trio.lowlevel.add_instrument(_HandOver())
            nursery.start_soon(fuse_loop)
            await trio.to_thread.run_sync(wait_until_mounted, config.mountpoint)
            await trio.to_thread.run_sync(raise_read_ahead, config.mountpoint, log)
            if config.pidfile:
                write_pidfile(config.pidfile)
            log.info("ready", pidfile=config.pidfile)
            token = trio.lowlevel.current_trio_token()
            # Lazy mode's actions are handed to the control plane only on a lazy mount.
            lazy = (
                MountedLazy(ops, token, config.mountpoint)
                if isinstance(ops, LazyOperations)
                else None
            )
            bus = BusControl(
                config, engine, ops, token, log, lazy=lazy, handler_delay=config.test_handler_delay
            )
            bus.start()
            if config.metrics_addr:
                metrics.serve(config.metrics_addr, engine, bus)
            if _EARLY_SIGNALS:
                log.info("signal", signal=signal.Signals(_EARLY_SIGNALS[0]).name)
            else:
                async for signum in signals:
                    log.info("signal", signal=signal.Signals(signum).name)
                    break
            # Announce "gone" while the mount still answers, then end the FUSE loop.
            await trio.to_thread.run_sync(bus.stop)
            bus = None
            pyfuse3.terminate()
    if bus is not None:
        await trio.to_thread.run_sync(bus.stop)


# Signals that arrive while mounting, before trio listens: honoured once it does.
_EARLY_SIGNALS: list[int] = []


def _remember_signal(signum: int, _frame: object) -> None:
    _EARLY_SIGNALS.append(signum)
