"""SoftHSM2 token set-up for development and tests: a private token directory and config."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hsm.errors import HsmUnavailable

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@dataclass(frozen=True)
class SoftHsmToken:
    """A SoftHSM2 token initialised in its own directory."""

    conf: Path
    label: str
    pin_file: Path
    module: str = DEFAULT_MODULE


def init_softhsm_token(directory: Path, label: str) -> SoftHsmToken:
    """Create `directory`/tokens, a softhsm2.conf pointing at it, and a token with a random PIN.

    The PIN is written to `directory`/pin (mode 0600); the SO PIN is random and discarded.
    """
    util = shutil.which("softhsm2-util")
    if util is None:
        raise HsmUnavailable("softhsm2-util not found: install the softhsm2 package")
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
        "slots.removable = false\n"
    )
    pin_file = directory / "pin"
    pin = secrets.token_hex(16)
    fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(pin)
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    result = subprocess.run(
        [util, "--init-token", "--free", "--label", label, "--so-pin", secrets.token_hex(16),
         "--pin", pin],
        env=env, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise HsmUnavailable(f"softhsm2-util --init-token failed: {result.stderr.strip()}")
    return SoftHsmToken(conf=conf, label=label, pin_file=pin_file)
