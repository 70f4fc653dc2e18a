"""PostgreSQL over lazy mode, cut the way LazyFS tests databases: a client outside
the mount logs every acknowledged commit, the power goes out (every PostgreSQL
process killed, unsynced data and directory operations lost), PostgreSQL restarts
on the same mount and must still hold every acknowledged commit.

With the journal model (the default, what ext4 and xfs keep) PostgreSQL with
fsync=on loses nothing over five cuts. With the strict model the same cut also
undoes the relation files PostgreSQL created and fsynced but whose directory it
never fsynced: a loss POSIX allows and the file systems people run do not make.

Debian's postgresql package, installed here if missing (apt-get); the test is
skipped, saying why, where it cannot be.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_lazy import Program, ask

from conftest import Sidecar, is_mounted, wait_for

CUTS = 5


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def pg_bin() -> Path:
    """PostgreSQL's programs, installing Debian's package first if they are missing."""
    if _postgres_bin() is None and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], env=env,
                           capture_output=True, timeout=600, check=False)  # fmt: skip
    found = _postgres_bin()
    if found is None:
        pytest.skip("PostgreSQL is not installed and `apt-get install postgresql` failed")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user (Debian's postgresql package makes one)")
    return found


def as_postgres(*cmd: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd]


class Postgres:
    """One PostgreSQL server on a data directory under the mount; socket outside it."""

    def __init__(self, bin_dir: Path, data: Path, sockets: Path) -> None:
        self.bin, self.data, self.sockets = bin_dir, data, sockets
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = sockets / "postgres.log"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            as_postgres(str(self.bin / "postgres"), "-D", str(self.data), "-k", str(self.sockets),
                        "-c", "listen_addresses=", "-c", "fsync=on",
                        "-c", "synchronous_commit=on", "-c", "full_page_writes=on"),
            stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"),  # noqa: SIM115
        )  # fmt: skip

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"postgres exited: {self.log.read_text()[-3000:]}")
            done = subprocess.run(as_postgres(str(self.bin / "pg_isready"), "-h",
                                              str(self.sockets), "-q"), check=False)  # fmt: skip
            return done.returncode == 0

        wait_for(ready, timeout=60, interval=0.1, what="postgres to accept connections")

    def sql(self, query: str) -> str:
        done = subprocess.run(
            as_postgres(str(self.bin.parent / "bin" / "psql"), "-X", "-At", "-h",
                        str(self.sockets), "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                        "-c", query),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, (query, done.stderr, self.log.read_text()[-3000:])
        return done.stdout

    def load(self, first: int) -> Program:
        """A client outside the mount: one INSERT a commit, the id printed once acknowledged."""
        script = self.sockets / f"load-{first}.sql"
        script.write_text(
            "".join(f"INSERT INTO acks VALUES ({n}) RETURNING n;\n"
                    for n in range(first, first + 100_000))
        )  # fmt: skip
        os.chmod(script, 0o644)
        return Program(
            as_postgres(str(self.bin / "psql"), "-X", "-At", "-h", str(self.sockets), "-d",
                        "postgres", "-f", str(script)),
            cwd=Path("/"),
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


@pytest.fixture
def postgres(pg_bin: Path, nats_server) -> Iterator[tuple[Sidecar, Postgres]]:
    # Not in pytest's temporary tree: the postgres user must reach the data, and each
    # pytest session makes that tree root's alone again.
    root = Path(tempfile.mkdtemp(prefix="chaosfs-pg-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    sc = Sidecar(root, nats_server.url, "default/pg-0", ["-lazy"], {})
    pg: Postgres | None = None
    try:
        sc.start()
        data = sc.mountpoint / "pg"
        data.mkdir()
        shutil.chown(data, "postgres", "postgres")
        os.chmod(data, 0o700)
        sockets = root / "sockets"
        sockets.mkdir()
        shutil.chown(sockets, "postgres", "postgres")
        init = subprocess.run(as_postgres(str(pg_bin / "initdb"), "-D", str(data), "-A",
                                          "trust", "-U", "postgres"),
                              capture_output=True, text=True, timeout=300,
                              check=False)  # fmt: skip
        assert init.returncode == 0, init.stderr
        pg = Postgres(pg_bin, data, sockets)
        pg.start()
        pg.sql("CREATE TABLE acks (n integer PRIMARY KEY)")
        yield sc, pg
    finally:
        if pg is not None:
            pg.stop()
        sc.cleanup()
        if not is_mounted(sc.mountpoint):
            shutil.rmtree(root, ignore_errors=True)


def cut_under_load(sc: Sidecar, pg: Postgres, first: int, **cut: object) -> tuple[set[int], dict]:
    """Run the load until some commits are acknowledged, cut the power; (acked, reply)."""
    load = pg.load(first)
    load.wait_line(lambda line: line.strip().isdigit() and int(line) >= first + 30,
                   timeout=60, what="30 acknowledged commits")  # fmt: skip
    reply = ask(sc, "power-cut", **cut)
    assert reply["survivors"] == []
    assert pg.proc is not None
    pg.proc.wait(10)  # the postmaster, killed
    lines = load.finish(timeout=30)  # its connection gone, the client ends
    acked = {int(line) for line in lines if line.strip().isdigit()}
    return acked, reply


def test_postgres_with_fsync_on_keeps_every_acknowledged_commit_over_five_cuts(postgres):
    sc, pg = postgres
    acked: set[int] = set()
    for cut in range(CUTS):
        got, reply = cut_under_load(sc, pg, 1000 * (cut + 1), metadata=True)
        acked |= got
        assert reply["lost"]["model"] == "journal"
        pg.start()  # crash recovery on the same mount
        present = {int(n) for n in pg.sql("SELECT n FROM acks").split()}
        missing = acked - present
        assert not missing, f"cut {cut + 1}: {len(missing)} acknowledged commits lost"
    assert len(acked) >= CUTS * 30


def test_with_the_strict_model_the_cut_undoes_relation_files_as_before(postgres):
    sc, pg = postgres
    # The table's file was created and fsynced by PostgreSQL, its directory never:
    # the journal model keeps it, strict POSIX does not.
    journal = ask(sc, "report-unsynced")["unsynced"]
    strict = ask(sc, "report-unsynced", model="strict")["unsynced"]
    created = {op["path"] for op in strict["dir_ops"] if op["kind"] == "create"}
    assert any(path.startswith("pg/base/") for path in created), strict["dir_ops"]
    assert not any(op["path"].startswith("pg/base/") for op in journal["dir_ops"])
    _, reply = cut_under_load(sc, pg, 1000, metadata=True, model="strict")
    undone = {op["path"] for op in reply["lost"]["dir_ops"] if op["kind"] == "create"}
    assert any(path.startswith("pg/base/") for path in undone), reply["lost"]["dir_ops"]
    time.sleep(0)  # nothing more to wait for: the files are gone on the disk
    assert not all((sc.original / path).exists() for path in undone)
