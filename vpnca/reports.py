"""Operator listings that scale: `vpnca list` and `vpnca report expiring` stream their rows.

Rows come from the database a batch at a time in keyset order (`--after SERIAL` continues where a
page ended, `--limit N` ends a page) and go out as they come: one JSON object per line with `--json`
(JSON Lines), or a table with fixed column widths. A reader that stops early (`| head`) ends the
command quietly, exit status 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, TextIO

from vpnca.errors import BadRequest
from vpnca.store import CertStatus
from vpnca.x509util import parse_serial

if TYPE_CHECKING:
    from vpnca.store import Database

LIST_COLUMNS = ["serial", "status", "profile", "identities", "not_after", "protocol"]
EXPIRING_COLUMNS = ["serial", "profile", "identities", "not_after", "requester"]
_WIDTHS = {"serial": 32, "status": 8, "profile": 8, "identities": 32, "not_after": 19, "protocol": 8,
           "requester": 24}


def parse_moment(text: str, *, option: str, end_of_day: bool = False) -> datetime:
    """An ISO 8601 date or time; a bare date is midnight UTC (with `end_of_day`, the next midnight, so
    that the day is included); a time without an offset is UTC."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime.combine(day, time(), tzinfo=UTC)
            return moment + timedelta(days=1) if end_of_day else moment
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadRequest(f"{option}: not an ISO 8601 date or time: {text!r}") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def certificate_dict(row: Any) -> dict[str, Any]:
    """A certificate row as `vpnca list --json` and `vpnca show --json` print it."""
    on_hold = row.status == CertStatus.REVOKED and row.revocation_reason == "certificateHold"
    return {
        "serial": row.serial,
        "status": "on-hold" if on_hold else row.status,
        "profile": row.profile,
        "subject": row.subject,
        "identities": [i.value for i in row.identities],
        "not_before": row.not_before.isoformat(),
        "not_after": row.not_after.isoformat(),
        "requester": row.requester,
        "protocol": row.protocol,
        "created_at": row.created_at.isoformat(),
        "revoked_at": _iso(row.revoked_at),
        "revocation_reason": row.revocation_reason,
        "error": row.error,
    }


@dataclass(frozen=True)
class CertificateQuery:
    """The filters and page of a listing (the options of `vpnca list` and `vpnca report expiring`)."""

    status: str | None = None  # a CertStatus value or "on-hold"
    profile: str | None = None
    identity: str | None = None  # a substring of one of the identities, case-insensitive
    expires_before: datetime | None = None  # exclusive
    expires_after: datetime | None = None  # inclusive
    issued_since: datetime | None = None  # inclusive
    after: str | None = None  # the serial the previous page ended with
    limit: int | None = None
    by_expiry: bool = False  # (not_after, serial) order instead of serial order

    def rows(self, store: Database) -> Iterator[dict[str, Any]]:
        if self.limit is not None and self.limit < 1:
            raise BadRequest("--limit must be at least 1")
        rows = store.iter_certificates(
            status=None if self.status == "on-hold" else self.status, on_hold=self.status == "on-hold",
            profile=self.profile, identity=self.identity, expires_before=self.expires_before,
            expires_after=self.expires_after, issued_since=self.issued_since, after=self.after,
            limit=self.limit, by_expiry=self.by_expiry)
        needle = self.identity.casefold() if self.identity else None
        try:
            for row in rows:
                record = certificate_dict(row)
                # the database matched the stored JSON; keep the rows where an identity itself matches
                if needle is None or any(needle in value.casefold() for value in record["identities"]):
                    yield record
        finally:
            rows.close()  # ends the read transaction and its cursor


def write_rows(rows: Iterable[dict[str, Any]], columns: Sequence[str], as_json: bool,
               out: TextIO | None = None) -> int:
    """Stream rows to stdout as JSON Lines or a fixed-width table; the first row is flushed at once.
    A reader that went away (BrokenPipeError) ends the output quietly. Returns the rows written."""
    out = out or sys.stdout
    count = 0
    try:
        if not as_json:
            out.write("  ".join(c.upper().ljust(_WIDTHS.get(c, 10)) for c in columns).rstrip() + "\n")
        for row in rows:
            if as_json:
                out.write(json.dumps(row) + "\n")
            else:
                cells = {**row, "identities": ",".join(row["identities"]), "not_after": row["not_after"][:19]}
                out.write("  ".join(str(cells.get(c) or "").ljust(_WIDTHS.get(c, 10))
                                    for c in columns).rstrip() + "\n")
            count += 1
            if count == 1:
                out.flush()
        out.flush()
    except BrokenPipeError:
        reader_gone(out)
    return count


def reader_gone(out: TextIO) -> None:
    """The reader closed the pipe: point stdout at /dev/null so that the interpreter's final flush of
    what is still buffered does not fail again (the recipe of Python's `signal` documentation)."""
    try:
        fd = out.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)




def add_query_arguments(parser: argparse.ArgumentParser, *, listing: bool) -> None:
    """The paging and filter options; `listing` (`vpnca list`) adds --status and the expiry bounds."""
    parser.add_argument("--json", action="store_true", help="JSON Lines: one JSON object per line")
    parser.add_argument("--limit", type=int, help="at most N rows (a page)")
    parser.add_argument("--after", metavar="SERIAL", help="continue after this serial (the last of a page)")
    parser.add_argument("--identity", metavar="SUBSTRING", help="an identity contains this (any case)")
    parser.add_argument("--profile")
    parser.add_argument("--issued-since", metavar="DATE", help="issued at or after DATE (ISO 8601)")
    if listing:
        parser.add_argument("--status", choices=[s.value for s in CertStatus] + ["on-hold"])
        parser.add_argument("--expires-before", metavar="DATE", help="notAfter before DATE")
        parser.add_argument("--expires-after", metavar="DATE", help="notAfter at or after DATE")


def query_from_args(args: argparse.Namespace, **fixed: Any) -> CertificateQuery:
    """The query of the options `add_query_arguments` added; `fixed` sets fields the command decides."""

    def moment(name: str) -> datetime | None:
        value = getattr(args, name, None)
        return parse_moment(value, option="--" + name.replace("_", "-")) if value else None

    after = getattr(args, "after", None)
    fields: dict[str, Any] = {
        "status": getattr(args, "status", None), "profile": args.profile, "identity": args.identity,
        "expires_before": moment("expires_before"), "expires_after": moment("expires_after"),
        "issued_since": moment("issued_since"), "after": parse_serial(after) if after else None,
        "limit": args.limit,
    }
    return CertificateQuery(**{**fields, **fixed})


__all__ = ["EXPIRING_COLUMNS", "LIST_COLUMNS", "CertificateQuery", "add_query_arguments", "certificate_dict",
           "parse_moment", "query_from_args", "reader_gone", "write_rows"]
