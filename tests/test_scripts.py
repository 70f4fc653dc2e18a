"""The chaos-scripts image's scripts/init.sh and scripts/wait-fuse.sh, run as real
processes under dash and under sh, against real directories, tmpfs mounts and a
real chaosfs mount."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INIT = REPO / "scripts" / "init.sh"
WAIT = REPO / "scripts" / "wait-fuse.sh"
SHELL_NAMES = ("dash", "sh")

# Chaos Mesh v0.9's `./scripts/init.sh -h`, which init.sh prints first, word for word.
SEED_INIT_USAGE = """\
USAGE: ./scripts/init.sh [-d data directory] [-f fuse directory]
Used to do some preparation
OPTIONS:
   -h                      Show this message
   -d <data directory>     Data directory of the application
   -f <fuse directory>     Data directory of the fuse original directory
   -s <scripts directory>  Scripts directory
EXAMPLES:
   init.sh -d /var/lib/tikv/data -f /var/lib/tikv/fuse-data
"""


@pytest.fixture(
    params=[
        pytest.param(
            name, marks=pytest.mark.skipif(shutil.which(name) is None, reason=f"no {name}")
        )
        for name in SHELL_NAMES
    ]
)
def shell(request: pytest.FixtureRequest) -> str:
    return request.param


def run(
    shell: str, script: Path | str, *args: object, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shell, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=cwd,
    )


def timed(shell: str, script: Path, *args: object) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = run(shell, script, *args)
    return result, time.monotonic() - start


def tree(root: Path) -> dict[str, tuple]:
    """Everything under ``root``: type, mode and content or link target."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            what = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            what = ("dir", stat.S_IMODE(st.st_mode))
        else:
            what = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
        found[str(path.relative_to(root))] = what
    return found


def fill(data: Path) -> None:
    """Some application data: a file, a dot file, a subdirectory, a symlink."""
    (data / "db" / "wal").mkdir(parents=True)
    (data / "CURRENT").write_text("MANIFEST-000001\n")
    (data / ".lock").write_bytes(b"")
    (data / "db" / "wal" / "000001.log").write_bytes(os.urandom(4096))
    (data / "latest").symlink_to("db/wal/000001.log")
    data.chmod(0o750)


@contextlib.contextmanager
def tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def write_pid(pidfile: Path, pid: int) -> None:
    """As chaosfs writes it: whole, by a rename."""
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    tmp = pidfile.with_name(pidfile.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(pidfile)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --- usage -----------------------------------------------------------------------


def test_help_prints_usage_and_exits_0(shell: str) -> None:
    init = run(shell, "./scripts/init.sh", "-h", cwd=REPO)
    assert (init.returncode, init.stderr) == (0, "")
    assert init.stdout.startswith(SEED_INIT_USAGE)
    assert "-s defaults to /tmp/scripts" in init.stdout

    wait = run(shell, "./scripts/wait-fuse.sh", "-h", cwd=REPO)
    assert (wait.returncode, wait.stderr) == (0, "")
    lines = wait.stdout.splitlines()
    assert lines[0] == (
        "USAGE: ./scripts/wait-fuse.sh [-f <file>] [-d <delay>] [-r <retry>] [-m <mountpoint>] [-s]"
    )
    assert lines[1] == "Waiting for fuse server ready"
    for option in ("-h ", "-f <file> ", "-d <delay> ", "-r <retry> ", "-m <mountpoint> ", "-s "):
        assert any(line.startswith(f"   {option}") for line in lines), option
    assert "(default /tmp/fuse/pid)" in wait.stdout
    assert "   wait-fuse.sh -f /tmp/fuse/pid -d 5 -r 60" in lines
    assert "<host>" not in wait.stdout  # Chaos Mesh v0.9's leftover from another script


INIT_USAGE_ERRORS = {
    "unknown option": ["-x"],
    "-d without its argument": ["-d"],
    "-f missing": ["-d", "{tmp}/data"],
    "-d missing": ["-f", "{tmp}/fuse"],
    "empty -d": ["-d", "", "-f", "{tmp}/fuse"],
    "stray argument": ["-d", "{tmp}/data", "-f", "{tmp}/fuse", "extra"],
    "-h taken as -d's argument, so -f missing": ["-d", "-h"],
}
WAIT_USAGE_ERRORS = {
    "unknown option": ["-x"],
    "-r without its argument": ["-r"],
    "non-numeric -r": ["-r", "abc"],
    "zero -r": ["-r", "0"],
    "negative -r": ["-r", "-1"],
    "fractional -r": ["-r", "1.5"],
    "non-numeric -d": ["-d", "soon"],
    "negative -d": ["-d", "-1"],
    "malformed -d": ["-d", "1.2.3"],
    "stray argument": ["extra"],
}


@pytest.mark.parametrize(
    "script, args",
    [pytest.param(INIT, args, id=f"init.sh {name}") for name, args in INIT_USAGE_ERRORS.items()]
    + [
        pytest.param(WAIT, args, id=f"wait-fuse.sh {name}")
        for name, args in WAIT_USAGE_ERRORS.items()
    ],
)
def test_usage_errors_exit_2(shell: str, tmp_path: Path, script: Path, args: list[str]) -> None:
    result = run(shell, script, *(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert f"{script.name}: " in result.stderr.splitlines()[0]
    assert "USAGE: " in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was created


# --- init.sh ---------------------------------------------------------------------


def test_init_creates_directories_and_copies_scripts(shell: str, tmp_path: Path) -> None:
    vol, scripts = tmp_path / "vol", tmp_path / "pod" / "scripts"
    result = run(shell, INIT, "-d", vol / "data", "-f", vol / "fuse-data", "-s", scripts)
    assert result.returncode == 0, result
    assert sorted(p.name for p in vol.iterdir()) == ["data", "fuse-data"]
    assert list((vol / "data").iterdir()) == list((vol / "fuse-data").iterdir()) == []
    assert sorted(p.name for p in scripts.iterdir()) == ["init.sh", "wait-fuse.sh"]
    for name in ("init.sh", "wait-fuse.sh"):
        copy = scripts / name
        assert copy.read_bytes() == (REPO / "scripts" / name).read_bytes()
        assert stat.S_IMODE(copy.stat().st_mode) == 0o755
    # The copies work from there, also onto themselves (-s is their own directory).
    again = run(
        shell, scripts / "init.sh", "-d", vol / "data", "-f", vol / "fuse-data", "-s", scripts
    )
    assert again.returncode == 0, again
    assert run(shell, scripts / "wait-fuse.sh", "-h").returncode == 0


@pytest.mark.parametrize("fuse_exists", [False, True], ids=["new fuse dir", "empty fuse dir"])
def test_init_moves_existing_data_into_the_fuse_directory(
    shell: str, tmp_path: Path, fuse_exists: bool
) -> None:
    vol = tmp_path / "a volume"  # paths with spaces
    data, fuse = vol / "tikv data", vol / "fuse-data"
    fill(data)
    if fuse_exists:
        fuse.mkdir()
    before, inode = tree(data), data.stat().st_ino
    args = ("-d", data, "-f", fuse, "-s", tmp_path / "scripts")

    result = run(shell, INIT, *args)
    assert result.returncode == 0, result
    assert "moved the data" in result.stdout
    assert tree(fuse) == before
    assert fuse.stat().st_ino == inode  # renamed, not copied
    assert stat.S_IMODE(fuse.stat().st_mode) == 0o750
    assert data.is_dir() and list(data.iterdir()) == []
    assert sorted(p.name for p in vol.iterdir()) == ["fuse-data", "tikv data"]  # no leftovers

    # Idempotent: a second run finds the data moved and changes nothing.
    state = tree(vol)
    again = run(shell, INIT, *args)
    assert again.returncode == 0, again
    assert "nothing to move" in again.stdout
    assert tree(vol) == state


def test_init_refuses_when_both_directories_hold_data(shell: str, tmp_path: Path) -> None:
    data, fuse = tmp_path / "data", tmp_path / "fuse-data"
    fill(data)
    fuse.mkdir()
    (fuse / "other").write_text("not the same data")
    before = tree(tmp_path)
    result = run(shell, INIT, "-d", data, "-f", fuse, "-s", tmp_path / "scripts")
    assert result.returncode == 1, result
    assert "both the data directory" in result.stderr
    assert "refusing" in result.stderr
    assert tree(tmp_path) == before  # nothing moved, not even the scripts


@pytest.mark.parametrize(
    "data, fuse, message",
    [
        ("data", "data/fuse-data", "is inside the data directory"),
        ("fuse-data/data", "fuse-data", "is inside the fuse directory"),
        ("data", "data", "the same directory"),
        ("data", "link-to-data", "the same directory"),
    ],
)
def test_init_refuses_overlapping_directories(
    shell: str, tmp_path: Path, data: str, fuse: str, message: str
) -> None:
    fill(tmp_path / data)
    (tmp_path / "link-to-data").symlink_to("data")
    before = tree(tmp_path)
    result = run(shell, INIT, "-d", tmp_path / data, "-f", tmp_path / fuse, "-s", tmp_path / "s")
    assert result.returncode == 1, result
    assert message in result.stderr
    assert tree(tmp_path) == before  # the fuse directory it made is gone again


def test_init_takes_relative_paths_even_ones_like_options(shell: str, tmp_path: Path) -> None:
    fill(tmp_path / "-data")
    before = tree(tmp_path / "-data")
    result = run(shell, INIT, "-d", "-data", "-f", "fuse data", "-s", "s", cwd=tmp_path)
    assert result.returncode == 0, result
    assert tree(tmp_path / "fuse data") == before
    assert list((tmp_path / "-data").iterdir()) == []
    assert (tmp_path / "s" / "wait-fuse.sh").exists()


def test_init_refuses_a_file_for_a_directory(shell: str, tmp_path: Path) -> None:
    fill(tmp_path / "data")
    (tmp_path / "fuse-data").write_text("a file")
    before = tree(tmp_path)
    result = run(shell, INIT, "-d", tmp_path / "data", "-f", tmp_path / "fuse-data")
    assert result.returncode == 1, result
    assert "fuse-data is not a directory" in result.stderr
    assert tree(tmp_path) == before


def test_init_never_copies_data_across_mounts(shell: str, tmp_path: Path) -> None:
    # The data directory is a mount point of its own: a rename cannot move it.
    with tmpfs(tmp_path / "data") as data:
        fill(data)
        before = tree(data)
        result = run(shell, INIT, "-d", data, "-f", tmp_path / "fuse-data", "-s", tmp_path / "s")
        assert result.returncode == 1, result
        assert "is a mount point (tmpfs)" in result.stderr
        assert tree(data) == before
        assert not (tmp_path / "fuse-data").exists()  # made, then removed again
    # The data's volume is not the fuse directory's: a rename would become a copy.
    with tmpfs(tmp_path / "volume") as vol:
        fill(vol / "data")
        before = tree(vol)
        result = run(shell, INIT, "-d", vol / "data", "-f", tmp_path / "fuse", "-s", tmp_path / "s")
        assert result.returncode == 1, result
        assert "not on the same mount" in result.stderr
        assert tree(vol) == before  # no probe file left behind either
        assert not (tmp_path / "fuse").exists()
        assert not any(p.name.startswith(".chaos-init") for p in tmp_path.iterdir())


def test_init_needs_wait_fuse_next_to_it(shell: str, tmp_path: Path) -> None:
    lonely = tmp_path / "bin" / "init.sh"
    lonely.parent.mkdir()
    shutil.copy(INIT, lonely)
    result = run(shell, lonely, "-d", tmp_path / "data", "-f", tmp_path / "fuse")
    assert result.returncode == 1, result
    assert "cannot find wait-fuse.sh" in result.stderr


# --- wait-fuse.sh ----------------------------------------------------------------


@pytest.mark.parametrize("strict", [False, True], ids=["", "-s"])
def test_wait_returns_once_a_live_pid_appears(shell: str, tmp_path: Path, strict: bool) -> None:
    pidfile = tmp_path / "fuse" / "pid"
    writer = threading.Timer(0.3, write_pid, (pidfile, os.getpid()))
    writer.start()
    try:
        args = ["-f", pidfile, "-d", "0.05", "-r", "100", *(["-s"] if strict else [])]
        result, elapsed = timed(shell, WAIT, *args)
    finally:
        writer.cancel()
    assert result.returncode == 0, result
    assert f"chaosfs is ready (pid {os.getpid()})" in result.stdout
    assert 0.3 <= elapsed < 2.0
    assert "try 1/100: no pid file" in result.stderr


def test_wait_gives_up_after_exactly_r_tries(shell: str, tmp_path: Path) -> None:
    result, elapsed = timed(shell, WAIT, "-f", tmp_path / "pid", "-d", "0.1", "-r", "3")
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert [line.split(":")[1] for line in lines[:3]] == [" try 1/3", " try 2/3", " try 3/3"]
    assert lines[3] == f"wait-fuse.sh: gave up after 3 tries: no pid file {tmp_path / 'pid'}"
    assert len(lines) == 4
    # Three tries, 0.1 s apart: two sleeps, no sleep after the last try.
    assert 0.18 <= elapsed < 1.5

    once, elapsed = timed(shell, WAIT, "-f", tmp_path / "pid", "-d", "5", "-r", "1")
    assert once.returncode == 1
    assert "gave up after 1 try: " in once.stderr
    assert elapsed < 1.0  # no sleep at all


@pytest.mark.parametrize("content", ["", "chaosfs\n", "0\n", "-1\n", "12 34\n"])
def test_wait_needs_a_pid_in_the_pidfile(shell: str, tmp_path: Path, content: str) -> None:
    (tmp_path / "pid").write_text(content)
    result = run(shell, WAIT, "-f", tmp_path / "pid", "-d", "0", "-r", "2")
    assert result.returncode == 1, result
    assert "gave up after 2 tries: " in result.stderr
    assert "holds no pid" in result.stderr


def test_wait_and_a_stale_pid(shell: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    write_pid(pidfile, dead_pid())
    # -s: the pod shares its process namespace, so a pid not seen is a dead chaosfs.
    result, elapsed = timed(shell, WAIT, "-f", pidfile, "-d", "0.05", "-r", "3", "-s")
    assert result.returncode == 1, result
    assert result.stderr.count("is not running") == 4  # three tries and the verdict
    assert "gave up after 3 tries" in result.stderr
    assert elapsed >= 0.09
    # Without -s a pid not seen may be chaosfs in its own PID namespace: the pid
    # file alone is accepted (use -m to prove the mount instead).
    lenient = run(shell, WAIT, "-f", pidfile, "-d", "0.05", "-r", "3")
    assert lenient.returncode == 0, lenient


def test_wait_mount_check_rejects_what_is_not_chaosfs(shell: str, tmp_path: Path) -> None:
    write_pid(tmp_path / "pid", os.getpid())
    plain = tmp_path / "plain"
    plain.mkdir()
    args = ["-f", tmp_path / "pid", "-d", "0.01", "-r", "2", "-s"]
    result = run(shell, WAIT, *args, "-m", plain)
    assert result.returncode == 1, result
    assert f"{plain} is not a chaosfs mount (not a mount point)" in result.stderr
    with tmpfs(tmp_path / "mnt") as mnt:
        result = run(shell, WAIT, *args, "-m", mnt)
    assert result.returncode == 1, result
    assert f"{mnt} is not a chaosfs mount (tmpfs)" in result.stderr


def test_scripts_against_a_real_chaosfs_mount(make_sidecar, tmp_path: Path) -> None:
    shells = [name for name in SHELL_NAMES if shutil.which(name)]
    sidecar = make_sidecar(bus=False)
    (sidecar.original / "CURRENT").write_text("served through the mount\n")
    pidfile, mountpoint, original = sidecar.pidfile, sidecar.mountpoint, sidecar.original
    for sh in shells:
        for strict in ([], ["-s"]):
            result = run(
                sh, WAIT, "-f", pidfile, "-m", mountpoint, "-d", "0.05", "-r", "3", *strict
            )
            assert result.returncode == 0, result
            assert f"mount {mountpoint}" in result.stdout
        # A relative mountpoint, with a trailing slash, works as well.
        result = run(sh, WAIT, "-f", pidfile, "-m", "data/", "-r", "1", cwd=mountpoint.parent)
        assert result.returncode == 0, result
        # init.sh run again while chaosfs serves the data: nothing is moved.
        before = tree(original)
        result = run(sh, INIT, "-d", mountpoint, "-f", original, "-s", tmp_path / "s")
        assert result.returncode == 0, result
        assert "is already a chaosfs mount: nothing to move" in result.stdout
        assert tree(original) == before

    # chaosfs killed: its mount is dead (ENOTCONN) and its pid file stale.
    sidecar.stop(signal.SIGKILL)
    assert pidfile.exists()
    for sh in shells:
        result = run(sh, WAIT, "-f", pidfile, "-m", mountpoint, "-d", "0.01", "-r", "2")
        assert result.returncode == 1, result
        assert f"gave up after 2 tries: the chaosfs mount at {mountpoint} does not answer" in (
            result.stderr
        )
        result = run(sh, WAIT, "-f", pidfile, "-m", mountpoint, "-d", "0.01", "-r", "2", "-s")
        assert result.returncode == 1, result
        assert "is not running" in result.stderr
        # init.sh leaves the dead mount to the next chaosfs, which detaches it.
        result = run(sh, INIT, "-d", mountpoint, "-f", original, "-s", tmp_path / "s")
        assert result.returncode == 0, result
        assert "is the mount of a dead chaosfs" in result.stdout
    assert (original / "CURRENT").read_text() == "served through the mount\n"


# --- lint ------------------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("shellcheck") is None,
    reason="shellcheck is not installed (Debian package shellcheck, see the Makefile)",
)
def test_scripts_are_shellcheck_clean() -> None:
    result = subprocess.run(
        ["shellcheck", "-s", "sh", str(INIT), str(WAIT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
