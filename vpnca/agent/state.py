"""The agent's state directory: state.json (what it holds and when it renews) and its file names.

state.json never holds a secret: the key is named by its file or by its token label and CKA_ID, the
token PIN by the path of its file.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from vpnca.agent.errors import UsageError
from vpnca.agent.files import write_atomic

RENEW_AT = 2 / 3  # of the lifetime
JITTER = 0.05  # ± of the lifetime


@dataclass
class KeyRef:
    """Where the private key is: a PEM file in the directory, or a key pair on a PKCS#11 token."""

    kind: str  # file | pkcs11
    algorithm: str  # ec-p256 | ec-p384 | rsa-3072
    path: str | None = None  # file: key.pem
    module: str | None = None  # pkcs11: the module's path
    token_label: str | None = None
    label: str | None = None  # the key pair's CKA_LABEL
    key_id: str | None = None  # its CKA_ID, hex (charon's load-token handle)
    pin_file: str | None = None

    @classmethod
    def of(cls, data: dict[str, Any]) -> KeyRef:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class AgentState:
    server: str
    trust_anchor_sha256: str
    profile: str
    identity: str
    key: KeyRef
    serial: str | None = None
    not_before: str | None = None
    not_after: str | None = None
    obtained_at: str | None = None  # when this certificate was received (its issuance, near enough)
    next_renewal: str | None = None
    keep_key: bool = False
    previous_key: KeyRef | None = None  # the key being replaced, removed once the new one is loaded
    vici: str | None = None  # unix:///path of the endpoint's charon
    charon_key_id: str | None = None  # what charon's load-key/load-token answered, to unload it later
    loaded_serial: str | None = None  # the certificate charon was last given
    exec_cmd: str | None = None
    last_run: str | None = None
    last_success: str | None = None
    last_error: str | None = None
    failures: int = 0
    history: list[dict[str, str]] = field(default_factory=list)  # the last renewals (serials, times)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> AgentState:
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        data["key"] = KeyRef.of(data["key"])
        if data.get("previous_key"):
            data["previous_key"] = KeyRef.of(data["previous_key"])
        return cls(**data)

    def not_after_time(self) -> datetime | None:
        return parse_time(self.not_after)

    def next_renewal_time(self) -> datetime | None:
        return parse_time(self.next_renewal)


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value)


def renewal_time(cert: x509.Certificate, obtained_at: datetime, rng: random.Random | None = None) -> datetime:
    """2/3 of the way from issuance to expiry, ± 5 % of the lifetime. The CA backdates notBefore (for
    clock skew), so issuance is taken as when the certificate was received, when that is within its
    validity; otherwise notBefore."""
    start = cert.not_valid_before_utc
    if start <= obtained_at < cert.not_valid_after_utc:
        start = obtained_at
    lifetime = cert.not_valid_after_utc - start
    jitter = (rng or random).uniform(-JITTER, JITTER)
    return start + lifetime * (RENEW_AT + jitter)


@dataclass(frozen=True)
class AgentDir:
    """The files of one agent directory."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def cert(self) -> Path:
        return self.root / "cert.pem"

    @property
    def cert_prev(self) -> Path:
        return self.root / "cert.pem.prev"

    @property
    def chain(self) -> Path:
        return self.root / "chain.pem"

    @property
    def anchor(self) -> Path:
        return self.root / "trust-anchor.pem"

    @property
    def key(self) -> Path:
        return self.root / "key.pem"

    @property
    def key_prev(self) -> Path:
        return self.root / "key.pem.prev"

    @property
    def cert_next(self) -> Path:
        return self.root / "cert.pem.next"

    @property
    def key_next(self) -> Path:
        return self.root / "key.pem.next"

    @property
    def log(self) -> Path:
        return self.root / "agent.jsonl"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def load(self) -> AgentState:
        if not self.state.exists():
            raise UsageError(f"no agent state in {self.root}: enroll first with `vpnca agent enroll`")
        try:
            return AgentState.from_json(self.state.read_text())
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{self.state} is not a valid agent state: {exc}") from exc

    def save(self, state: AgentState) -> None:
        write_atomic(self.state, state.to_json().encode(), 0o600)

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert.read_bytes())

    def chain_certificates(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self.chain.read_bytes()) if self.chain.exists() else []


def short(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{days}d{hours}h" if days else f"{hours}h{minutes}m" if hours else f"{minutes}m{seconds}s"
    return sign + text
