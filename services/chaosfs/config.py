"""What a chaosfs sidecar was started with, once its flags and environment are read.

A module of its own, read by the command line (which builds it), the mount and the
control plane (which use it), so that none of those has to import another for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chaosbus.bus import BusAuth

DEFAULT_LAZY_MAX_BYTES = 256 << 20
# The kernel's: dirty data older than 30 s is written back; the flusher wakes every 5 s.
DEFAULT_LAZY_EXPIRE = 30.0
DEFAULT_LAZY_FLUSH_INTERVAL = 5.0
LAZY_METADATA_MODELS = ("journal", "strict")


@dataclass(frozen=True)
class Config:
    original: str
    mountpoint: str
    pidfile: str | None
    nats_url: str
    namespace: str
    pod: str
    cache_timeout: float
    heartbeat: float
    log_level: str
    ignored_addr: str | None
    labels: dict[str, str] = field(default_factory=dict)
    auth: BusAuth = field(default_factory=BusAuth)
    metrics_addr: str | None = None
    lazy: bool = False
    lazy_max_bytes: int = DEFAULT_LAZY_MAX_BYTES
    lazy_metadata: str = "journal"
    lazy_expire: float = DEFAULT_LAZY_EXPIRE
    lazy_flush_interval: float = DEFAULT_LAZY_FLUSH_INTERVAL
    # For a system test only: how long the control plane holds every command,
    # blocking its own loop, to show that file I/O never notices
    # ($CHAOSFS_TEST_HANDLER_DELAY, in seconds; never set in production).
    test_handler_delay: float = 0.0

    @property
    def pod_ref(self) -> str:
        return f"{self.namespace}/{self.pod}"
