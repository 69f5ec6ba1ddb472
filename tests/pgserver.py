"""
A throwaway PostgreSQL server for the tests: C{initdb} in a temporary
directory, C{postgres} listening on a unix socket in it only (no TCP port
to race for), stopped by its PID at the end.

PostgreSQL refuses to run as root: when the tests run as root (CI), the
server runs as the C{postgres} user (created by the Debian package) through
C{runuser}.

A server dies with the process that started it, however that process
ends: beside each server runs a tiny watcher (L{WATCHER}, a process of its
own session, so that what kills the tests' process group spares it) that
holds the read end of a pipe whose write end only the starting process
holds.  The process that ends (a SIGKILL, trial's timeout) closes it: at
the end of the pipe, the watcher stops the server (SIGINT, a fast
shutdown, then SIGKILL to its process group) and removes its directory.
L{PostgreSQLServer.destroy} tells the watcher that it did that itself.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

#: Where PostgreSQL's server programs are installed, by packaging: Debian
#: and Ubuntu (C{postgresql-NN}), the PGDG packages of Red Hat and its
#: kin (C{postgresqlNN-server}), a source build's default prefix.  Each
#: version has a directory of its own; the newest is taken.
BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")


#: The watcher's program: C{python -c WATCHER DIRECTORY}, its standard
#: input the read end of the pipe.  It reads lines: C{group G} (the
#: server's process group is G), C{stopped} (it has none now), C{gone}
#: (the directory is removed: exit).  At the end of the pipe without
#: C{gone}, it stops the group it knows of (SIGINT, then SIGKILL after
#: 5 s), and removes the directory.
WATCHER = """
import os, shutil, signal, sys, time
def running(group):
    try:
        os.killpg(group, 0)
    except OSError:
        return False
    # Zombies (not reaped yet) do not count.
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else ():
        try:
            with open("/proc/%s/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            return True
    return not os.path.isdir("/proc")
group, rest = None, b""
while True:
    data = os.read(0, 4096)
    if not data:
        break
    *lines, rest = (rest + data).split(b"\\n")
    for line in lines:
        word, _, value = line.decode().partition(" ")
        if word == "group":
            group = int(value)
        elif word == "stopped":
            group = None
        elif word == "gone":
            sys.exit(0)
if group is not None:
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except OSError:
            break
        deadline = time.monotonic() + 5
        while running(group) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not running(group):
            break
shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


def versionKey(path: str) -> tuple[int, ...]:
    """
    @return: the version numbers in C{path}, to sort by: C{9.6} before
        C{10}, as strings would not.
    """
    return tuple(int(n) for n in re.findall(r"\d+", path))


def binDir() -> str | None:
    """
    @return: the directory of C{initdb} and C{postgres}: the one named by
        C{TASKD_PG_BINDIR}, else the newest version's of L{BIN_GLOBS},
        else the one C{initdb} is found in on C{PATH} (Fedora, Arch,
        Alpine, Homebrew put it there); or C{None}.
    """
    def complete(d: str) -> bool:
        return all(os.access(os.path.join(d, p), os.X_OK) for p in ("initdb", "postgres"))

    chosen = os.environ.get("TASKD_PG_BINDIR")
    if chosen:
        return chosen if complete(chosen) else None
    found = [d for pattern in BIN_GLOBS for d in glob.glob(pattern) if complete(d)]
    if found:
        return max(found, key=versionKey)
    initdb = shutil.which("initdb")
    if initdb is not None and complete(os.path.dirname(initdb)):
        return os.path.dirname(initdb)
    return None


def skipReason() -> str | None:
    """
    @return: why PostgreSQL tests cannot run here, or C{None}.
    """
    try:
        import psycopg

        del psycopg
    except ImportError:
        return "psycopg is not installed (pip install '.[postgresql]')"
    if binDir() is None:
        return (
            "PostgreSQL's server programs (initdb, postgres) are not installed "
            "(apt install postgresql), or not where tests/pgserver.py looks: set TASKD_PG_BINDIR"
        )
    if os.getuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
    return None


class PostgreSQLServer:
    """
    One throwaway PostgreSQL cluster.

    @ivar dsn: a libpq connection string for its C{postgres} database.
    @ivar pid: the postmaster's process id while it runs.
    @ivar dir: its directory (data, socket, log), removed by L{destroy} or
        by its watcher.
    """

    def __init__(self) -> None:
        bindir = binDir()
        assert bindir is not None
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="taskd-pg-")
        self.data = os.path.join(self.dir, "data")
        self.user = "postgres" if os.getuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
        if os.getuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.dsn = f"postgresql:///postgres?host={self.dir}&user={self.user}"
        self.pid: int | None = None
        # The watcher: the write end of its pipe is this process's alone
        # (os.pipe's ends are not inherited by the programs it starts).
        read, watch = os.pipe()
        self._watch: int | None = watch
        self._watcher = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", WATCHER, self.dir], stdin=read,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        os.close(read)
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", self.user, "--no-sync", "-E", "UTF8")

    def _command(self, program: str, *args: str) -> list[str]:
        command = [os.path.join(self.bindir, program), *args]
        if os.getuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return command

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(self._command(program, *args), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, cwd=self.dir)

    def start(self, timeout: float = 30.0) -> None:
        """
        Start the server and wait until it takes connections.
        """
        log = open(os.path.join(self.dir, "server.log"), "ab")
        process = subprocess.Popen(
            self._command(
                "postgres", "-D", self.data, "-k", self.dir, "-c", "listen_addresses=",
                "-c", "fsync=off", "-c", "max_connections=200", "-c", "shared_buffers=32MB",
            ),
            stdout=log, stderr=log, cwd=self.dir, start_new_session=True,
        )
        log.close()
        self._process = process
        self._tell(f"group {process.pid}")
        pidFile = os.path.join(self.data, "postmaster.pid")
        deadline = time.monotonic() + timeout
        import psycopg

        while True:
            if process.poll() is not None:
                raise RuntimeError("postgres exited: " + self.log()[-2000:])
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    # Not up in time: stop it now, by its process group (no
                    # PID file to stop it by later).
                    self._killGroup(process)
                    raise
                time.sleep(0.05)
        with open(pidFile) as f:
            self.pid = int(f.readline())

    def log(self) -> str:
        with open(os.path.join(self.dir, "server.log"), errors="replace") as f:
            return f.read()

    def _tell(self, line: str) -> None:
        """
        Tell the watcher C{line}.
        """
        if self._watch is not None:
            os.write(self._watch, line.encode() + b"\n")

    def _killGroup(self, process: subprocess.Popen[bytes]) -> None:
        """
        Kill C{process} and the server it started (a session of their own).
        """
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(30)
        self._tell("stopped")

    def stop(self, sig: int = signal.SIGINT) -> None:
        """
        Stop the server (fast shutdown: SIGINT) by its PID and wait for it.
        """
        if self.pid is None:
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass
        self._process.wait(30)
        self.pid = None
        self._tell("stopped")

    def destroy(self) -> None:
        """
        Stop the server and remove its directory; the watcher exits.
        """
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._watch is not None:
            self._tell("gone")
            os.close(self._watch)
            self._watch = None
            self._watcher.wait(30)


_shared: PostgreSQLServer | None = None


def sharedServer() -> PostgreSQLServer:
    """
    @return: the one server the tests of this process share (each test
        uses a database of its own), started on first use and stopped when
        the process exits (by C{atexit}, or by its watcher if the process
        is killed).
    """
    global _shared
    if _shared is None:
        import atexit

        _shared = PostgreSQLServer()
        _shared.start()
        atexit.register(_shared.destroy)
    return _shared


_counter = 0


def freshDatabase(server: PostgreSQLServer | None = None) -> str:
    """
    Create an empty database on the (shared) server.

    @return: its connection string.
    """
    global _counter
    import psycopg

    server = server or sharedServer()
    _counter += 1
    name = f"t{os.getpid()}_{_counter}"
    with psycopg.connect(server.dsn, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    return server.dsn.replace("/postgres?", f"/{name}?")


def dropDatabase(dsn: str, server: PostgreSQLServer | None = None) -> None:
    import psycopg

    server = server or sharedServer()
    name = dsn.split("/")[3].split("?")[0]
    with psycopg.connect(server.dsn, autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


__all__ = ["PostgreSQLServer", "dropDatabase", "freshDatabase", "sharedServer", "skipReason"]
