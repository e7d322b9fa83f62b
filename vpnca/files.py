"""Writing files that hold secrets."""

import os
import stat
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path`, readable by the owner only (an existing file is truncated, its mode reset)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if regular:
            os.fchmod(fd, 0o600)
        handle.write(data)
        handle.flush()
        if regular:
            os.fsync(fd)


STATE_UMASK = 0o027  # files vpnca creates: owner read-write, group read, nothing for others
STATE_FILE_MODE = 0o640


def restrict_state_files(home: Path, database_url: str) -> list[Path]:
    """Take group write and every 'other' permission from the files that hold the CA's state
    (vpnca.toml, the SQLite database with its WAL and SHM, the logs), as a CA deployed before this
    was the rule has them 0644: the database holds EAB HMAC keys. Returns the files changed."""
    candidates = [home / "vpnca.toml", *sorted((home / "log").glob("*"))]
    if database_url.startswith("sqlite:///"):
        database = Path(database_url.removeprefix("sqlite:///"))
        candidates += [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    changed = []
    for path in candidates:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & ~STATE_FILE_MODE:
            path.chmod(mode & STATE_FILE_MODE)
            changed.append(path)
    return changed
