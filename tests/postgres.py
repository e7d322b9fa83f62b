"""A private PostgreSQL cluster from the Debian package (initdb + pg_ctl in a temp dir), which a
test can stop and start again."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.helpers import free_port, require_tool, run


class PostgresCluster:
    def __init__(self) -> None:
        bindir = Path("/usr/lib/postgresql")
        versions = sorted(bindir.glob("*/bin/initdb")) if bindir.exists() else []
        initdb = str(versions[-1]) if versions else require_tool("initdb")
        self.pg_ctl = str(Path(initdb).with_name("pg_ctl"))
        self.base = Path(tempfile.mkdtemp(prefix="vpnca-pg-"))
        self.data, self.sockets = self.base / "data", self.base / "run"
        self.sockets.mkdir()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.base, user.pw_uid, user.pw_gid)
            os.chown(self.sockets, user.pw_uid, user.pw_gid)
            self.as_user = [require_tool("runuser"), "-u", "postgres", "--"]
        self.port = free_port()
        run([*self.as_user, initdb, "-A", "trust", "-U", "vpnca", "-D", str(self.data)])

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://vpnca@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        run([*self.as_user, self.pg_ctl, "-D", str(self.data), "-l", str(self.base / "log"), "-w", "-o",
             f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=on", "start"])

    def stop(self) -> None:
        subprocess.run([*self.as_user, self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"],
                       capture_output=True, check=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
