#!/bin/sh
# init.sh: prepare a pod for the chaosfs sidecar (run by the injected initContainer).
#
#   init.sh -d <data directory> -f <fuse directory> [-s <scripts directory>]
#
# 1. Creates the fuse directory (chaosfs's -original) and the data directory
#    (chaosfs's -mountpoint, the directory the application uses).
# 2. Moves existing data so that the application keeps seeing it through the
#    mount: when the data directory holds data and the fuse directory is empty,
#    the data directory is renamed to the fuse directory (one rename(2) on one
#    file system: the data is never copied and is never half moved) and a new,
#    empty data directory is made as the mountpoint. The fuse directory thus
#    keeps the data directory's owner, mode and inode.
#    - Re-running is harmless: once moved, the data directory is empty.
#    - A data directory that is already a chaosfs mount is left alone, even the
#      dead mount of a killed chaosfs (the next chaosfs detaches it on start).
#    - Refused (exit 1; nothing moved, and the directories this run made are
#      removed again) when both directories hold data, when the two are the
#      same or one is inside the other, when the data directory is a mount
#      point of its own, or when the two are not on the same mount (the rename
#      would turn into a copy).
# 3. Copies init.sh and wait-fuse.sh (found next to this script) into the
#    scripts directory, an emptyDir shared by every container of the pod.
#
# Exit status: 0 done, 1 refused or failed (the message says why), 2 usage error.
# POSIX sh; paths holding a newline are not supported.

unset CDPATH
PROG=${0##*/}
NL='
'
TAB=$(printf '\t')

usage() {
    cat <<USAGE
USAGE: $0 [-d data directory] [-f fuse directory]
Used to do some preparation
OPTIONS:
   -h                      Show this message
   -d <data directory>     Data directory of the application
   -f <fuse directory>     Data directory of the fuse original directory
   -s <scripts directory>  Scripts directory
EXAMPLES:
   init.sh -d /var/lib/tikv/data -f /var/lib/tikv/fuse-data
NOTES:
   -d and -f are required; -s defaults to /tmp/scripts.
   Creates both directories. If the data directory holds data and the fuse
   directory is empty, renames the data directory to the fuse directory (so
   the application's data is served through the chaosfs mount) and makes a
   new, empty data directory as the mountpoint. Refuses when both hold data.
   Copies init.sh and wait-fuse.sh into the scripts directory.
USAGE
}

say() {
    printf '%s: %s\n' "$PROG" "$*"
}

die() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit 1
}

# refuse MESSAGE: remove the directories this run made (if still empty), then die.
refuse() {
    _made=$made
    while [ -n "$_made" ]; do
        rmdir "${_made%%"$NL"*}" 2>/dev/null
        _made=${_made#*"$NL"}
    done
    die "$@"
}

usage_error() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    usage >&2
    exit 2
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

# present PATH: true when something is at PATH, a dead mount included.
present() {
    [ -e "$1" ] || [ -L "$1" ] || {
        _at=$(canon_path "$1") && [ -n "$(mount_type "$_at")" ]
    }
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

# holds_data DIR: true when DIR has any entry; refuses when DIR cannot be read.
holds_data() {
    _entries=$(ls -A "$1" 2>&1) || refuse "cannot read $1: $_entries"
    [ -n "$_entries" ]
}

# parent PATH: the directory that holds the canonical PATH.
parent() {
    _parent=${1%/*}
    printf '%s\n' "${_parent:-/}"
}

# same_mount DIR1 DIR2: true when a hard link from DIR1 to DIR2 works, that is
# when both are on the same mount, so that rename(2) between them works too.
same_mount() {
    _probe=${1%/}/.chaos-init-probe.$$
    _link=${2%/}/.chaos-init-link.$$
    : >"$_probe" || refuse "cannot write in $1"
    if ln "$_probe" "$_link" 2>/dev/null; then
        rm -f "$_link" "$_probe"
        return 0
    fi
    rm -f "$_probe"
    return 1
}

# check_path NAME VALUE: dies unless VALUE is a usable path.
check_path() {
    [ -n "$2" ] || usage_error "$1 must not be empty"
    case $2 in
        *"$NL"*) usage_error "$1 must not hold a newline" ;;
    esac
}

# absolute PATH: PATH, made absolute (so that no command takes it for an option).
absolute() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "${PWD%/}" "$1" ;;
    esac
}

DATA_DIR=
FUSE_DIR=
SCRIPTS_DIR=/tmp/scripts

while getopts ':hd:f:s:' opt; do
    case $opt in
        h)
            usage
            exit 0
            ;;
        d) DATA_DIR=$OPTARG ;;
        f) FUSE_DIR=$OPTARG ;;
        s) SCRIPTS_DIR=$OPTARG ;;
        :) usage_error "option -$OPTARG needs an argument" ;;
        *) usage_error "unknown option -$OPTARG" ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || usage_error "unexpected argument: $1"
[ -n "$DATA_DIR" ] || usage_error "missing -d <data directory>"
[ -n "$FUSE_DIR" ] || usage_error "missing -f <fuse directory>"
check_path "-d <data directory>" "$DATA_DIR"
check_path "-f <fuse directory>" "$FUSE_DIR"
check_path "-s <scripts directory>" "$SCRIPTS_DIR"
DATA_DIR=$(absolute "$DATA_DIR")
FUSE_DIR=$(absolute "$FUSE_DIR")
SCRIPTS_DIR=$(absolute "$SCRIPTS_DIR")

# The scripts to copy, next to this one.
case $0 in
    */*) SOURCE=${0%/*} ;;
    *) SOURCE=. ;;
esac
SOURCE=$(canon "$SOURCE") || die "cannot find the directory of $0"
for script in init.sh wait-fuse.sh; do
    [ -f "$SOURCE/$script" ] || die "cannot find $script in $SOURCE"
done

# 1. Both directories; a refusal below removes those made here (when empty).
made=
for dir in "$FUSE_DIR" "$DATA_DIR"; do
    if ! present "$dir"; then
        mkdir -p "$dir" || refuse "cannot create the directory $dir"
        made="$dir$NL$made"
    fi
done
FUSE=$(canon_path "$FUSE_DIR") || refuse "cannot resolve the fuse directory $FUSE_DIR"
DATA=$(canon_path "$DATA_DIR") || refuse "cannot resolve the data directory $DATA_DIR"
if [ "$DATA" = / ] || [ "$FUSE" = / ]; then
    refuse "the data and fuse directories must not be /"
fi
[ "$DATA" != "$FUSE" ] || refuse "the data and fuse directories are the same directory: $DATA"
case $FUSE/ in
    "$DATA"/*) refuse "the fuse directory $FUSE is inside the data directory $DATA" ;;
esac
case $DATA/ in
    "$FUSE"/*) refuse "the data directory $DATA is inside the fuse directory $FUSE" ;;
esac
data_type=$(mount_type "$DATA")
[ -d "$FUSE" ] || refuse "the fuse directory $FUSE is not a directory"
[ -d "$DATA" ] || [ -n "$data_type" ] || refuse "the data directory $DATA is not a directory"

# 2. The application's existing data.
if [ "$data_type" = fuse.chaosfs ]; then
    if ls "$DATA" >/dev/null 2>&1; then
        say "$DATA is already a chaosfs mount: nothing to move"
    else
        say "$DATA is the mount of a dead chaosfs, which the next chaosfs detaches when it starts: nothing to move"
    fi
elif holds_data "$DATA"; then
    if holds_data "$FUSE"; then
        refuse "both the data directory $DATA and the fuse directory $FUSE hold data: refusing to merge them; empty one of them"
    fi
    [ -z "$data_type" ] ||
        refuse "the data directory $DATA is a mount point ($data_type): its data cannot be moved by a rename; mount the volume one level up"
    same_mount "$(parent "$DATA")" "$(parent "$FUSE")" ||
        refuse "$DATA and $FUSE are not on the same mount: init.sh moves data only by a rename, never by copying; put the fuse directory on the data's volume"
    rmdir "$FUSE" || die "cannot replace the empty fuse directory $FUSE"
    if ! mv "$DATA" "$FUSE"; then
        mkdir -p "$FUSE"
        die "cannot rename $DATA to $FUSE"
    fi
    mkdir "$DATA" || die "moved the data to $FUSE but cannot create the mountpoint $DATA"
    say "moved the data of $DATA into $FUSE; $DATA is the empty mountpoint"
else
    say "$DATA holds no data: nothing to move"
fi

# 3. The scripts, for every container of the pod.
mkdir -p "$SCRIPTS_DIR" || die "cannot create the scripts directory $SCRIPTS_DIR"
TARGET=$(canon "$SCRIPTS_DIR") || die "cannot enter the scripts directory $SCRIPTS_DIR"
if [ "$TARGET" != "$SOURCE" ]; then
    for script in init.sh wait-fuse.sh; do
        # Copied under a temporary name, then renamed: never seen half written.
        tmp=$TARGET/.$script.$$
        if ! { cp "$SOURCE/$script" "$tmp" && chmod 755 "$tmp" && mv -f "$tmp" "$TARGET/$script"; }; then
            rm -f "$tmp"
            die "cannot copy $script into $TARGET"
        fi
    done
fi
say "scripts in $TARGET"
exit 0
