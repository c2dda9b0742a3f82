"""A real PgBouncer (Debian's ``pgbouncer``) in front of the test Postgres, configured as
people configure it in front of a managed database: transaction pooling, a small pool
per database (so clients queue for a server session), ``extra_float_digits`` ignored,
trust authentication with an auth file. It listens on a free 127.0.0.1 port and stops
with the ``with`` block.

    with PgBouncer.start(server_url, pool_size=4) as bouncer:
        bouncer.url("postgresql://postgres@127.0.0.1:5432/db")  # the same database, pooled
        bouncer.stats("db")  # SHOW STATS of that database
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

import psycopg

from devtools.devstack import free_port

# Debian's package refuses to run as root: it is started as this user then.
RUN_AS = "postgres"


def why_unavailable() -> str | None:
    """Why no PgBouncer can be started here, or None."""
    if shutil.which("pgbouncer") is None:
        return "pgbouncer is not installed (Debian's package `pgbouncer`; .ci/run installs it)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"pgbouncer refuses to run as root and there is no {RUN_AS!r} user to run it as"
    return None


@dataclass
class PgBouncer:
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path

    @property
    def log_path(self) -> Path:
        return self.workdir / "pgbouncer.log"

    @classmethod
    def start(cls, server_url: str, *, pool_size: int, timeout: float = 15) -> Self:
        """A PgBouncer whose every database is the one of that name on ``server_url``'s
        server (a ``*`` entry: tests make databases as they go)."""
        parts = urlsplit(server_url)
        if not parts.hostname or not parts.hostname[0].isalnum():
            raise RuntimeError(f"PgBouncer needs a TCP Postgres here, not {server_url!r}")
        # Its own directory under /tmp, not pytest's: run as another user, PgBouncer must
        # reach its files, and pytest's temporary root is the owner's alone.
        workdir = Path(tempfile.mkdtemp(prefix="wsj-pgbouncer-"))
        port = free_port()
        auth_file = workdir / "userlist.txt"
        auth_file.write_text(f'"{parts.username or "postgres"}" ""\n')
        config = workdir / "pgbouncer.ini"
        config.write_text(f"""\
[databases]
* = host={parts.hostname} port={parts.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {auth_file}
admin_users = {parts.username or "postgres"}
pool_mode = transaction
default_pool_size = {pool_size}
reserve_pool_size = 0
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits
""")
        for path in (workdir, auth_file, config):
            path.chmod(0o755 if path.is_dir() else 0o644)  # readable by the user it runs as
        log_path = workdir / "pgbouncer.log"
        user = ["-u", RUN_AS] if os.geteuid() == 0 else []
        with open(log_path, "ab") as log:
            process = subprocess.Popen(["pgbouncer", *user, str(config)], stdout=log, stderr=log)
        bouncer = cls(port, process, workdir)
        bouncer._wait_ready(timeout)
        return bouncer

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log
                self.stop()
                raise RuntimeError(f"pgbouncer did not start:\n{log}")
            time.sleep(0.05)

    def url(self, database_url: str) -> str:
        """``database_url``'s database, reached through this PgBouncer."""
        parts = urlsplit(database_url)
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit((parts.scheme, f"{user}127.0.0.1:{self.port}", parts.path, parts.query, ""))

    def stats(self, database: str) -> dict[str, int]:
        """PgBouncer's SHOW STATS row of ``database`` (totals since it started)."""
        return {k: int(v) for k, v in self._show("STATS", database).items() if k != "database"}

    def pool(self, database: str) -> dict[str, str]:
        """PgBouncer's SHOW POOLS row of ``database`` (connections now, the longest wait)."""
        return self._show("POOLS", database)

    def _show(self, what: str, database: str) -> dict[str, str]:
        # The admin console speaks only the simple query protocol: a client-side cursor.
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/pgbouncer", autocommit=True,
                             cursor_factory=psycopg.ClientCursor) as conn, conn.cursor() as cur:
            cur.execute(f"SHOW {what}")
            names = [d.name for d in cur.description or ()]
            for row in cur.fetchall():
                if row[0] == database:
                    return {n: str(v) for n, v in zip(names, row, strict=True)}
        return {}

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # PgBouncer's "shut down now"
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


