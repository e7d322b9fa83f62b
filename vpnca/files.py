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
