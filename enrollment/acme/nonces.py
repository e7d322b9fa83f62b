"""Anti-replay nonces (RFC 8555 6.5) that cost nothing to hand out.

A nonce is base64url(random 16 octets || issue time, milliseconds, 8 octets || HMAC-SHA256 of both
under the server's nonce key). Handing one out writes nothing; checking it needs no database (the MAC
and its age), and only using it does: the random part goes into the replay set of used nonces,
which every worker and machine shares (the database) and which forgets a nonce once it has expired.
The key is made once and kept in the database, so every worker and machine accepts every nonce.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from enrollment.acme.problems import bad_nonce

RANDOM_OCTETS = 16
NONCE_CHARS = 75  # base64url of 16 + 8 + 32 octets, unpadded
MAX_CLOCK_AHEAD_MS = 60_000  # a nonce from a machine whose clock runs ahead
_DOMAIN = b"vpnca acme nonce v1\0"


@dataclass(frozen=True)
class CheckedNonce:
    """A nonce whose MAC and age are good: `nonce_id` names it in the replay set until `expires_at`."""

    nonce_id: str
    expires_at: datetime


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Nonces:
    """Makes and checks nonces; `key` is called once, when the first nonce is made or checked."""

    def __init__(self, key: Callable[[], bytes], lifetime: timedelta,
                 clock: Callable[[], float] = time.time) -> None:
        self._load_key = key
        self._key: bytes | None = None
        self._lock = threading.Lock()
        self.lifetime_ms = int(lifetime.total_seconds() * 1000)
        self.clock = clock

    def _mac_key(self) -> bytes:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    self._key = self._load_key()
        return self._key

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._mac_key(), _DOMAIN + body, hashlib.sha256).digest()

    def make(self) -> str:
        body = secrets.token_bytes(RANDOM_OCTETS) + int(self.clock() * 1000).to_bytes(8, "big")
        return _b64url(body + self._mac(body))

    def check(self, nonce: Any) -> CheckedNonce:
        """Raise badNonce unless `nonce` is one of ours (its MAC) and neither expired nor from the future."""
        if not isinstance(nonce, str) or len(nonce) != NONCE_CHARS:
            raise bad_nonce("the nonce is not one of this server's")
        try:
            raw = base64.urlsafe_b64decode(nonce + "=")
        except (binascii.Error, ValueError) as exc:
            raise bad_nonce("the nonce is not one of this server's") from exc
        body, mac = raw[:RANDOM_OCTETS + 8], raw[RANDOM_OCTETS + 8:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise bad_nonce("the nonce is not one of this server's")
        issued_ms = int.from_bytes(body[RANDOM_OCTETS:], "big")
        now_ms = int(self.clock() * 1000)
        if now_ms >= issued_ms + self.lifetime_ms or issued_ms > now_ms + MAX_CLOCK_AHEAD_MS:
            raise bad_nonce("the nonce has expired")
        return CheckedNonce(_b64url(body[:RANDOM_OCTETS]),
                            datetime.fromtimestamp((issued_ms + self.lifetime_ms) / 1000, UTC))


__all__ = ["CheckedNonce", "Nonces"]
