"""The tamper-evident audit log: a SHA-256 hash chain over every init, issue, revoke and change.

Each entry's hash covers the previous entry's hash and its own fields, so an edited entry breaks
its own hash, a removed entry breaks the sequence and the next entry's link, and reordered entries
break the links. The chain is appended in the same transaction as the change it records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

GENESIS_HASH = "0" * 64


class AuditRecord(Protocol):
    """An audit entry to verify, read only: a stored AuditEntry or a ChainEntry (frozen)."""

    @property
    def seq(self) -> int: ...
    @property
    def created_at(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def details(self) -> str: ...
    @property
    def prev_hash(self) -> str: ...
    @property
    def entry_hash(self) -> str: ...


def canonical_details(details: dict[str, Any]) -> str:
    return json.dumps(details, sort_keys=True, separators=(",", ":"), default=str)


def entry_hash(prev_hash: str, seq: int, created_at: str, actor: str, action: str, details: str) -> str:
    body = json.dumps([prev_hash, seq, created_at, actor, action, details], separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class ChainEntry:
    """An audit entry outside the database (an exported chain, a test)."""

    seq: int
    created_at: str
    actor: str
    action: str
    details: str
    prev_hash: str
    entry_hash: str


@dataclass(frozen=True)
class AuditProblem:
    seq: int
    problem: str

    def __str__(self) -> str:
        return f"entry {self.seq}: {self.problem}"


@dataclass(frozen=True)
class ChainVerification:
    entries: int
    head_hash: str
    problems: tuple[AuditProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chain(records: Iterable[AuditRecord]) -> ChainVerification:
    """Walk the chain in stored order and name every entry that was edited, removed or moved."""
    problems: list[AuditProblem] = []
    expected_seq = 1
    prev = GENESIS_HASH
    count = 0
    for record in records:
        count += 1
        if record.seq != expected_seq:
            problems.append(AuditProblem(
                record.seq, f"sequence gap or reorder: expected entry {expected_seq} here"
            ))
        if record.prev_hash != prev:
            problems.append(AuditProblem(record.seq, "link to the previous entry is broken"))
        recomputed = entry_hash(
            record.prev_hash, record.seq, record.created_at, record.actor, record.action, record.details
        )
        if recomputed != record.entry_hash:
            problems.append(AuditProblem(record.seq, "contents were edited (hash mismatch)"))
        prev = record.entry_hash
        expected_seq = record.seq + 1
    return ChainVerification(entries=count, head_hash=prev, problems=tuple(problems))
