#!/bin/sh
# wait-fuse.sh: wait until the chaosfs sidecar serves the application's data
# directory (run as the application container's postStart hook).
#
#   wait-fuse.sh [-f <file>] [-d <delay>] [-r <retry>] [-m <mountpoint>] [-s]
#
# Ready means, at one try:
#   - the pid file (-f, default /tmp/fuse/pid) exists and holds a pid; chaosfs
#     writes it once its mount answers and removes it when it stops;
#   - that pid is alive: `kill -0` works, or /proc/<pid> exists (kill -0 fails
#     with EPERM when the application runs as another user than chaosfs).
#     The sidecar's pids are visible only when the pod sets
#     shareProcessNamespace: true. Without it, a pid that cannot be seen here
#     may be a live chaosfs in its own PID namespace or a dead one, and the
#     pid file alone is accepted. With -s (the pod shares its process
#     namespace) a pid that cannot be seen is a dead chaosfs: not ready.
#   - with -m <mountpoint>: /proc/mounts shows a fuse.chaosfs mount at that
#     path (the last one mounted there) and listing it answers. This also
#     proves a live daemon when the pid cannot be seen: the mount of a dead
#     FUSE daemon fails with ENOTCONN.
# It tries -r times (default 60), -d seconds apart (default 5; a decimal such
# as 0.5 works where sleep(1) takes fractions, as GNU and busybox sleep do),
# so it gives up after about (r - 1) * d seconds.
#
# Exit status: 0 ready, 1 gave up (the message says why), 2 usage error.
# Known limit: a pid reused by another process passes the pid test; -m does not
# rely on pids. A hung mount makes the listing (and so this script) hang.

unset CDPATH
PROG=${0##*/}
TAB=$(printf '\t')

usage() {
    cat <<USAGE
USAGE: $0 [-f <file>] [-d <delay>] [-r <retry>] [-m <mountpoint>] [-s]
Waiting for fuse server ready
OPTIONS:
   -h                   Show this message
   -f <file>            Set the target file: the pid file of chaosfs (default /tmp/fuse/pid)
   -d <delay>           Set the delay time: seconds between tries, like 5 or 0.5 (default 5)
   -r <retry>           Set the retry count: tries before giving up (default 60)
   -m <mountpoint>      Also wait until <mountpoint> is a chaosfs mount that answers
   -s                   The pod shares its process namespace: the pid must be alive here
EXAMPLES:
   wait-fuse.sh -f /tmp/fuse/pid -d 5 -r 60
   wait-fuse.sh -m /var/lib/tikv/data
USAGE
}

usage_error() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    usage >&2
    exit 2
}

# mount_type PATH: the type of the file system mounted exactly at the canonical
# PATH (the last one, if several are stacked), or nothing.
mount_type() {
    [ -r /proc/mounts ] || return 0
    # /proc/mounts writes space, tab and backslash as octal escapes.
    _escaped=$(printf '%s\n' "$1" | sed -e 's/\\/\\134/g' -e 's/ /\\040/g' -e "s/$TAB/\\\\011/g")
    MOUNT_PATH=$_escaped awk '$2 == ENVIRON["MOUNT_PATH"] { type = $3 }
        END { if (type != "") print type }' /proc/mounts
}

# canon DIR: the absolute path of the existing directory DIR, symlinks resolved.
canon() {
    case $1 in
        /*) _dir=$1 ;;
        *) _dir=./$1 ;;
    esac
    (cd -P "$_dir" 2>/dev/null && pwd -P)
}

# canon_path PATH: PATH made absolute with symlinks resolved, without entering
# PATH itself unless it is a symlink (it may be the dead mount of a killed FUSE
# daemon, which cannot even be stat'ed). Its parent must exist.
canon_path() {
    case $1 in
        /*) _path=$1 ;;
        *) _path=$PWD/$1 ;;
    esac
    _base=$(basename "$_path")
    case $_base in
        / | . | ..)
            canon "$_path"
            return
            ;;
    esac
    if [ -L "$_path" ]; then
        canon "$_path"
        return
    fi
    _parent=$(canon "$(dirname "$_path")") || return 1
    printf '%s/%s\n' "${_parent%/}" "$_base"
}

# ready: true when chaosfs is ready; otherwise REASON says why not.
ready() {
    if [ ! -e "$PIDFILE" ]; then
        REASON="no pid file $PIDFILE"
        return 1
    fi
    PID=$(cat "$PIDFILE" 2>/dev/null) || {
        REASON="cannot read the pid file $PIDFILE"
        return 1
    }
    case $PID in
        '' | 0* | *[!0-9]*)
            REASON="the pid file $PIDFILE holds no pid"
            return 1
            ;;
    esac
    if kill -0 "$PID" 2>/dev/null || [ -d "/proc/$PID" ]; then
        :
    elif [ -n "$STRICT" ]; then
        REASON="pid $PID (from $PIDFILE) is not running"
        return 1
    fi
    if [ -n "$MOUNTPOINT" ]; then
        _mp=$(canon_path "$MOUNTPOINT") || {
            REASON="cannot find the directory of $MOUNTPOINT"
            return 1
        }
        _type=$(mount_type "$_mp")
        if [ "$_type" != fuse.chaosfs ]; then
            REASON="$_mp is not a chaosfs mount (${_type:-not a mount point})"
            return 1
        fi
        if ! ls "$_mp" >/dev/null 2>&1; then
            REASON="the chaosfs mount at $_mp does not answer"
            return 1
        fi
    fi
    return 0
}

PIDFILE=/tmp/fuse/pid
DELAY=5
RETRY=60
MOUNTPOINT=
STRICT=

while getopts ':hf:d:r:m:s' opt; do
    case $opt in
        h)
            usage
            exit 0
            ;;
        f) PIDFILE=$OPTARG ;;
        d) DELAY=$OPTARG ;;
        r) RETRY=$OPTARG ;;
        m) MOUNTPOINT=$OPTARG ;;
        s) STRICT=1 ;;
        :) usage_error "option -$OPTARG needs an argument" ;;
        *) usage_error "unknown option -$OPTARG" ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || usage_error "unexpected argument: $1"
[ -n "$PIDFILE" ] || usage_error "-f <file> must not be empty"
case $PIDFILE in
    /*) ;;
    *) PIDFILE=${PWD%/}/$PIDFILE ;;
esac

# -d: seconds, a whole or decimal number (5, 0.5); -r: a whole number >= 1.
case $DELAY in
    '' | .* | *. | *[!0-9.]* | *.*.*) usage_error "-d <delay> must be a number of seconds, like 5 or 0.5: $DELAY" ;;
esac
case $RETRY in
    '' | *[!0-9]*) usage_error "-r <retry> must be a whole number: $RETRY" ;;
esac
while :; do
    case $RETRY in
        0?*) RETRY=${RETRY#0} ;;
        *) break ;;
    esac
done
if [ "$RETRY" = 0 ] || [ ${#RETRY} -gt 9 ]; then
    usage_error "-r <retry> must be between 1 and 999999999: $RETRY"
fi

try=1
while :; do
    if ready; then
        printf '%s: chaosfs is ready (pid %s%s)\n' "$PROG" "$PID" "${MOUNTPOINT:+, mount $MOUNTPOINT}"
        exit 0
    fi
    printf '%s: try %s/%s: %s\n' "$PROG" "$try" "$RETRY" "$REASON" >&2
    if [ "$try" -ge "$RETRY" ]; then
        tries=tries
        [ "$RETRY" = 1 ] && tries=try
        printf '%s: gave up after %s %s: %s\n' "$PROG" "$RETRY" "$tries" "$REASON" >&2
        exit 1
    fi
    try=$((try + 1))
    sleep "$DELAY" || {
        printf '%s: sleep %s failed\n' "$PROG" "$DELAY" >&2
        exit 1
    }
done
