"""A private PostgreSQL cluster that a test may stop and start at will.

The machine's shared Postgres serves other tests; stopping it would disturb them.
This one is the same server binaries, initialised in a temporary folder.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class PrivatePostgres:
    def __init__(self, port: int) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql")
        self.bin = bins[-1]
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="tallygate-pg-")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        subprocess.run(_as_postgres([f"{self.bin}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                                     "--no-sync"]), check=True, capture_output=True)

    def env(self, database: str = "postgres") -> dict:
        return {"PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": "postgres",
                "PGDATABASE": database, "PGSSL": "disable"}

    def running(self) -> bool:
        return subprocess.run(_as_postgres([f"{self.bin}/pg_ctl", "-D", self.data, "status"]),
                              capture_output=True).returncode == 0

    def start(self) -> None:
        if self.running():
            return
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(_as_postgres([f"{self.bin}/pg_ctl", "-D", self.data, "-o", opts, "-w", "-t", "30",
                                     "-l", os.path.join(self.dir, "log"), "start"]),
                       check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(_as_postgres([f"{self.bin}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"]),
                       check=False, capture_output=True)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
