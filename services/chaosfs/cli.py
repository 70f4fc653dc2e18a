"""The ``chaosfs`` command: Chaos Mesh v0.9's flags, plus the bus."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from chaosbus import __version__
from chaosbus.bus import BusAuth, default_url
from chaosbus.durations import parse_duration
from chaosbus.goflags import Flag, FlagError, parse_flags, usage
from chaosbus.kvlist import parse_pairs
from chaosbus.sizes import parse_size
from chaosbus.subjects import parse_pod

from .config import (
    DEFAULT_LAZY_EXPIRE,
    DEFAULT_LAZY_FLUSH_INTERVAL,
    DEFAULT_LAZY_MAX_BYTES,
    LAZY_METADATA_MODELS,
    Config,
)

_TRUE = {"1", "true", "yes", "on"}

FLAGS = (
    Flag(
        "original", "directory whose contents the mount shows (the app's real data)", metavar="DIR"
    ),
    Flag("mountpoint", "where to mount; the app's data directory", metavar="DIR"),
    Flag("pidfile", "file to write this process's pid to once the mount answers", metavar="FILE"),
    Flag(
        "nats",
        "NATS server URL(s), comma separated (default $NATS_URL, then nats://127.0.0.1:4222)",
        metavar="URL",
    ),
    Flag(
        "pod",
        "NAMESPACE/NAME this sidecar serves (default $POD_NAMESPACE/$POD_NAME)",
        metavar="NS/NAME",
    ),
    Flag(
        "addr",
        "ignored: Chaos Mesh v0.9's gRPC address; chaosfs listens on NATS instead",
        metavar="ADDR",
    ),
    Flag(
        "labels",
        "the pod's labels: a downward API labels file (default: $POD_LABELS as k=v,k=v)",
        metavar="FILE",
    ),
    Flag("nats-user", "NATS user ($NATS_USER)", metavar="USER"),
    Flag(
        "nats-password-file", "file holding the NATS password ($NATS_PASSWORD_FILE)", metavar="FILE"
    ),
    Flag(
        "nats-token-file",
        "file holding the pod's ServiceAccount token for the auth callout, read again at"
        " every connect ($NATS_TOKEN_FILE)",
        metavar="FILE",
    ),
    Flag("nats-creds", "NATS creds file ($NATS_CREDS)", metavar="FILE"),
    Flag("nats-nkey", "NATS nkey seed file ($NATS_NKEY)", metavar="FILE"),
    Flag(
        "nats-ca", "CA bundle that signed the NATS server's certificate ($NATS_CA)", metavar="FILE"
    ),
    Flag("nats-cert", "client certificate for NATS ($NATS_CERT)", metavar="FILE"),
    Flag("nats-key", "client key for NATS ($NATS_KEY)", metavar="FILE"),
    Flag("metrics-addr", "serve Prometheus /metrics on HOST:PORT", metavar="HOST:PORT"),
    Flag(
        "cache-timeout",
        "how long the kernel may cache names and attributes",
        default=5.0,
        parse=parse_duration,
        metavar="DURATION",
    ),
    Flag(
        "heartbeat",
        "interval between heartbeats on the bus",
        default=5.0,
        parse=parse_duration,
        metavar="DURATION",
    ),
    Flag(
        "lazy",
        "keep writes in memory until fsync makes them durable, so power-cut faults can lose"
        " them ($CHAOSFS_LAZY=1)",
        default=False,
        boolean=True,
    ),
    Flag(
        "lazy-max-bytes",
        "memory for unsynced writes in lazy mode; beyond it the oldest are written back early"
        " ($CHAOSFS_LAZY_MAX_BYTES)",
        metavar="SIZE",
    ),
    Flag(
        "lazy-metadata",
        "what a power cut keeps of directory operations: journal (as ext4 and xfs: a file's"
        " fsync also makes its creation and renames durable, in order) or strict (only a"
        " directory fsync does) ($CHAOSFS_LAZY_METADATA; default journal)",
        metavar="MODEL",
    ),
    Flag(
        "lazy-expire",
        "write back data and directory operations older than this, as a kernel does; 0 never"
        " ($CHAOSFS_LAZY_EXPIRE; default 30s)",
        metavar="DURATION",
    ),
    Flag(
        "lazy-flush-interval",
        "how often to look for what -lazy-expire says is due ($CHAOSFS_LAZY_FLUSH_INTERVAL;"
        " default 5s)",
        metavar="DURATION",
    ),
    Flag("log-level", "debug, info, warning or error", default="info", metavar="LEVEL"),
    Flag("version", "print the version and exit", default=False, boolean=True),
    Flag("help", "show this help", default=False, boolean=True),
    Flag("h", "show this help", default=False, boolean=True),
)


def parse_config(argv: Sequence[str], env: dict[str, str]) -> Config:
    values = parse_flags(FLAGS, argv)
    for required in ("original", "mountpoint"):
        if not values[required]:
            raise FlagError(f"missing required flag -{required}")
    original = os.path.abspath(values["original"])
    mountpoint = os.path.abspath(values["mountpoint"])
    if not os.path.isdir(original):
        raise FlagError(f"-original {original} is not a directory")
    if original == mountpoint:
        raise FlagError("-original and -mountpoint must differ")
    if values["pod"]:
        namespace, pod = parse_pod(values["pod"]) if "/" in values["pod"] else ("", "")
        if not pod:
            raise FlagError(f"-pod must be NAMESPACE/NAME, got {values['pod']!r}")
    else:
        namespace, pod = env.get("POD_NAMESPACE", ""), env.get("POD_NAME", "")
        if not namespace or not pod:
            raise FlagError(
                "no pod identity: pass -pod NAMESPACE/NAME or set POD_NAMESPACE and POD_NAME"
            )
    labels = read_labels(values["labels"]) if values["labels"] else env_labels(env)
    auth = BusAuth.resolve(
        {
            "user": values["nats-user"],
            "password_file": values["nats-password-file"],
            "token_file": values["nats-token-file"],
            "creds": values["nats-creds"],
            "nkey": values["nats-nkey"],
            "ca": values["nats-ca"],
            "cert": values["nats-cert"],
            "key": values["nats-key"],
        },
        env,
    )
    try:
        auth.options()  # unreadable credential files are a start-up error, not a retry loop
    except (ValueError, OSError) as exc:
        raise FlagError(str(exc)) from None
    if values["heartbeat"] <= 0:
        raise FlagError("-heartbeat must be above zero")
    lazy = values["lazy"] or env.get("CHAOSFS_LAZY", "").strip().lower() in _TRUE
    max_text = values["lazy-max-bytes"] or env.get("CHAOSFS_LAZY_MAX_BYTES") or ""
    try:
        lazy_max = parse_size(max_text) if max_text else DEFAULT_LAZY_MAX_BYTES
    except ValueError as exc:
        raise FlagError(f"-lazy-max-bytes: {exc}") from None
    if lazy_max < 1:
        raise FlagError("-lazy-max-bytes must be at least 1 byte")
    lazy_metadata = (
        values["lazy-metadata"] or env.get("CHAOSFS_LAZY_METADATA") or "journal"
    ).strip()
    if lazy_metadata not in LAZY_METADATA_MODELS:
        raise FlagError(
            f"-lazy-metadata must be {' or '.join(LAZY_METADATA_MODELS)}, got {lazy_metadata!r}"
        )
    lazy_expire = _lazy_duration(values, env, "lazy-expire", DEFAULT_LAZY_EXPIRE)
    lazy_interval = _lazy_duration(values, env, "lazy-flush-interval", DEFAULT_LAZY_FLUSH_INTERVAL)
    if lazy_interval <= 0:
        raise FlagError("-lazy-flush-interval must be above zero")
    return Config(
        original=original,
        mountpoint=mountpoint,
        pidfile=os.path.abspath(values["pidfile"]) if values["pidfile"] else None,
        nats_url=values["nats"] or env.get("NATS_URL") or default_url(),
        namespace=namespace,
        pod=pod,
        cache_timeout=values["cache-timeout"],
        heartbeat=values["heartbeat"],
        log_level=values["log-level"],
        ignored_addr=values["addr"],
        labels=labels,
        auth=auth,
        metrics_addr=values["metrics-addr"],
        lazy=lazy,
        lazy_max_bytes=lazy_max,
        lazy_metadata=lazy_metadata,
        lazy_expire=lazy_expire,
        lazy_flush_interval=lazy_interval,
        test_handler_delay=_test_handler_delay(env),
    )


def _test_handler_delay(env: dict[str, str]) -> float:
    """$CHAOSFS_TEST_HANDLER_DELAY: a system test's way to block the control plane."""
    try:
        return max(0.0, float(env.get("CHAOSFS_TEST_HANDLER_DELAY", "") or 0))
    except ValueError:
        raise FlagError("CHAOSFS_TEST_HANDLER_DELAY must be a number of seconds") from None


def _lazy_duration(values: dict, env: dict[str, str], flag: str, default: float) -> float:
    """-lazy-expire and -lazy-flush-interval: a flag, else its variable, else the default."""
    text = values[flag] or env.get("CHAOSFS_" + flag.upper().replace("-", "_")) or ""
    if not text.strip():
        return default
    try:
        value = parse_duration(text.strip())
    except ValueError as exc:
        raise FlagError(f"-{flag}: {exc}") from None
    if value < 0:
        raise FlagError(f"-{flag} must not be negative")
    return value


def read_labels(path: str) -> dict[str, str]:
    """The downward API's labels file: one ``key="value"`` per line, Go-quoted."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise FlagError(f"cannot read -labels {path}: {exc.strerror}") from None
    labels = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, quoted = line.partition("=")
        try:
            value = json.loads(quoted) if sep else None
        except ValueError:
            value = None
        if not isinstance(value, str) or not key:
            raise FlagError(f'-labels {path}:{number}: expected key="value", got {line!r}')
        labels[key] = value
    return labels


def env_labels(env: dict[str, str]) -> dict[str, str]:
    try:
        return dict(parse_pairs(env.get("POD_LABELS", ""), what="POD_LABELS"))
    except ValueError as exc:
        raise FlagError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        values = parse_flags(FLAGS, argv)
        if values["help"] or values["h"]:
            print(usage("chaosfs", FLAGS))
            return 0
        if values["version"]:
            print(f"chaosfs {__version__}")
            return 0
        config = parse_config(argv, dict(os.environ))
    except (FlagError, ValueError) as exc:
        print(f"chaosfs: {exc}", file=sys.stderr)
        return 2
    from .app import run  # heavy imports only once the flags are good

    return run(config)


if __name__ == "__main__":
    sys.exit(main())
