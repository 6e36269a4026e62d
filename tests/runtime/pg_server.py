"""A throwaway PostgreSQL server for tests: initdb in a temp dir, started on a free port, stopped by PID.

(A module of helpers for the tests beside it; it holds no tests.) PostgreSQL refuses to run as root, so as
root the server runs as the `postgres` user (Debian's package creates it) in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    # Debian keeps the server binaries out of PATH, under the major version
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


def missing() -> str | None:
    """Why no server can start here (None when one can)."""
    if _bin("initdb") is None or _bin("postgres") is None:
        return ("PostgreSQL is not installed here (Debian: apt-get install -y postgresql; CI's .ci/run installs "
                "it)")
    try:
        import psycopg  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed: pip install -e '.[runtime]' (CI installs it)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One running server; url() names a database on it."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rft-pg-"))
        self.port = _free_port()
        self.pid: int | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self._as, *cmd], check=True, capture_output=True, timeout=120, cwd=self.root)

    def start(self, timeout: float = 60) -> PostgresServer:
        data = self.root / "data"
        self._run(_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._run(_bin("pg_ctl"), "-D", str(data), "-l", str(self.root / "server.log"), "-w", "-t", str(int(timeout)),
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start")
        self.pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (SIGINT to the postmaster), waiting until it has gone; then the files go."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    try:
                        os.kill(self.pid, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.1)
                else:
                    os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)
