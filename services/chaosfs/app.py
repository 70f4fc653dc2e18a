"""Running chaosfs: mount, announce, serve until told to stop, clean up."""

from __future__ import annotations

import os
import resource
import signal
import sys

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
