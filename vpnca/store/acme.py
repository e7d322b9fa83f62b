"""ACME state (RFC 8555): external account keys, accounts, nonces, orders, authorizations, challenges.

Kept in the same database as the certificates, so every `vpnca serve` worker and machine sees the
same accounts and used nonces. State changes that race (binding an EAB key, using a nonce, starting a
challenge, finalizing an order) are conditional UPDATEs/DELETEs or INSERTs: the row count or the
unique key says who won.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from vpnca.errors import Conflict, NotAuthorized
from vpnca.store.database import utcnow
from vpnca.store.models import AcmeAccount, AcmeAuthorization, AcmeChallenge, AcmeEabKey, AcmeNonce, AcmeOrder
from vpnca.store.repository import Store

_NONCE_SWEEP_EVERY = 256  # uses of a nonce in this process between two sweeps of the expired ones
_NONCE_SWEEP_MARGIN = timedelta(minutes=5)
_NONCE_KEY_CLAIM = "~nonce-key"
_NONCE_KEY_PREFIX = "~nonce-key:"
_NEVER = datetime(9999, 12, 31, tzinfo=UTC)


def _rowcount(result: Any) -> int:
    """The rows an UPDATE or DELETE changed (a CursorResult's rowcount)."""
    return int(result.rowcount)


def new_id() -> str:
    return secrets.token_urlsafe(16)


class AcmeRepository:
    """Reads and writes of the ACME tables, over the one Store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._nonces_used = itertools.count()

    # -- external account binding keys -----------------------------------------------------------

    def add_eab_key(self, key: AcmeEabKey) -> None:
        with self.store.write() as session:
            session.add(key)
            self.store.append_audit(session, key.created_by, "acme-eab-create", {
                "kid": key.kid, "identities": [[i.kind, i.value] for i in key.allowed_identities],
                "profile": key.profile, "expires_at": key.expires_at.isoformat()})

    def eab_key(self, kid: str) -> AcmeEabKey | None:
        with self.store.read() as session:
            return session.get(AcmeEabKey, kid)

    def eab_keys(self) -> list[AcmeEabKey]:
        with self.store.read() as session:
            return list(session.scalars(select(AcmeEabKey).order_by(AcmeEabKey.created_at)))

    # -- nonces ------------------------------------------------------------------------------------
    # Nonces are made and checked without the database (enrollment/acme/nonces.py); acme_nonces holds
    # the nonces used (by their random part, until they expire) and, in two rows that never expire,
    # the HMAC key: a claim row with a fixed value, so that only one transaction ever inserts a key,
    # and the key itself (its value is the prefix and the key in base64url).

    def nonce_key(self) -> bytes:
        """The nonce HMAC key every worker and machine shares: made by the first that asks."""
        key = self._read_nonce_key()
        if key is not None:
            return key
        candidate = secrets.token_bytes(32)
        try:
            with self.store.write_core() as conn:
                conn.execute(insert(AcmeNonce), [
                    {"value": _NONCE_KEY_CLAIM, "expires_at": _NEVER},
                    {"value": _NONCE_KEY_PREFIX + base64.urlsafe_b64encode(candidate).decode(),
                     "expires_at": _NEVER},
                ])
        except IntegrityError:
            pass  # another worker made it first: use that one
        key = self._read_nonce_key()
        if key is None:
            raise RuntimeError("the ACME nonce key was claimed but is not in the database")
        return key

    def _read_nonce_key(self) -> bytes | None:
        with self.store.read() as session:
            values = session.scalars(select(AcmeNonce.value).where(AcmeNonce.expires_at >= _NEVER))
            found = sorted(v for v in values if v.startswith(_NONCE_KEY_PREFIX))
        return base64.urlsafe_b64decode(found[0][len(_NONCE_KEY_PREFIX):]) if found else None

    def use_nonce(self, nonce_id: str, expires_at: datetime) -> bool:
        """Record a nonce as used: True the first time, False for a replay. Now and then forget the
        used nonces that have expired (with a margin for clocks that differ between machines)."""
        try:
            with self.store.write_core() as conn:
                if next(self._nonces_used) % _NONCE_SWEEP_EVERY == 0:
                    expired = utcnow() - _NONCE_SWEEP_MARGIN
                    conn.execute(delete(AcmeNonce).where(AcmeNonce.expires_at <= expired))
                conn.execute(insert(AcmeNonce), {"value": nonce_id, "expires_at": expires_at})
            return True
        except IntegrityError:
            return False

    def new_nonce(self, lifetime: timedelta) -> str:
        """Deprecated: the server makes nonces without the database now (enrollment/acme/nonces.py).
        Kept for callers of the old API (tests/integration/test_migrations.py fills every table with
        it): records a random nonce id as used until `lifetime` from now, and returns it."""
        value = secrets.token_urlsafe(16)
        self.use_nonce(value, utcnow() + lifetime)
        return value

    def used_nonces(self) -> int:
        """How many used nonces the replay set holds now."""
        with self.store.read() as session:
            return int(session.scalar(select(func.count()).select_from(AcmeNonce)
                                      .where(AcmeNonce.expires_at < _NEVER)) or 0)

    # -- accounts ----------------------------------------------------------------------------------

    def account(self, account_id: str) -> AcmeAccount | None:
        with self.store.read() as session:
            return session.get(AcmeAccount, account_id)

    def account_by_thumbprint(self, thumbprint: str) -> AcmeAccount | None:
        with self.store.read() as session:
            return session.scalars(select(AcmeAccount)
                                   .where(AcmeAccount.key_thumbprint == thumbprint)).first()

    def create_account(self, account: AcmeAccount) -> AcmeAccount:
        """Insert the account, binding its EAB key (single use) in the same transaction; if another
        request created an account for the same key first, return that one."""
        try:
            with self.store.write() as session:
                if account.eab_kid is not None:
                    bound = session.execute(
                        update(AcmeEabKey)
                        .where(AcmeEabKey.kid == account.eab_kid, AcmeEabKey.account_id.is_(None),
                               AcmeEabKey.expires_at > account.created_at)
                        .values(account_id=account.id))
                    if not _rowcount(bound):
                        raise NotAuthorized(f"external account key {account.eab_kid} is used up or expired")
                session.add(account)
                self.store.append_audit(session, f"acme:{account.id}", "acme-account-create", {
                    "account": account.id, "key_thumbprint": account.key_thumbprint,
                    "eab_kid": account.eab_kid, "contact": json.loads(account.contact)})
            return account
        except IntegrityError:
            existing = self.account_by_thumbprint(account.key_thumbprint)
            if existing is None:
                raise
            return existing

    def update_account(self, account_id: str, **values: Any) -> AcmeAccount:
        """Change contact or status; deactivating also deactivates the account's pending authorizations."""
        with self.store.write() as session:
            account = session.get(AcmeAccount, account_id)
            assert account is not None
            for name, value in values.items():
                setattr(account, name, value)
            if values.get("status") == "deactivated":
                session.execute(update(AcmeAuthorization)
                                .where(AcmeAuthorization.account_id == account_id,
                                       AcmeAuthorization.status.in_(("pending", "valid")))
                                .values(status="deactivated"))
            self.store.append_audit(session, f"acme:{account_id}", "acme-account-update",
                                     {"account": account_id, **values})
            return account

    def change_key(self, account_id: str, old_thumbprint: str, jwk: str, thumbprint: str) -> AcmeAccount:
        """Roll the account key; Conflict if another account holds the new key already."""
        try:
            with self.store.write() as session:
                changed = session.execute(
                    update(AcmeAccount)
                    .where(AcmeAccount.id == account_id, AcmeAccount.key_thumbprint == old_thumbprint)
                    .values(jwk=jwk, key_thumbprint=thumbprint))
                if not _rowcount(changed):
                    raise Conflict("the account key changed meanwhile")
                self.store.append_audit(session, f"acme:{account_id}", "acme-key-change", {
                    "account": account_id, "old_thumbprint": old_thumbprint, "new_thumbprint": thumbprint})
        except IntegrityError as exc:
            raise Conflict("another account already uses this key") from exc
        account = self.account(account_id)
        assert account is not None
        return account

    # -- orders, authorizations, challenges ------------------------------------------------------

    def add_order(self, order: AcmeOrder, authorizations: Sequence[AcmeAuthorization],
                  challenges: Sequence[AcmeChallenge]) -> None:
        with self.store.write() as session:
            session.add_all([*authorizations, *challenges, order])

    def order(self, order_id: str) -> AcmeOrder | None:
        with self.store.read() as session:
            return session.get(AcmeOrder, order_id)

    def orders_of(self, account_id: str) -> list[str]:
        with self.store.read() as session:
            return list(session.scalars(select(AcmeOrder.id).where(AcmeOrder.account_id == account_id)
                                        .order_by(AcmeOrder.created_at)))

    def order_with_certificate(self, serial: str) -> AcmeOrder | None:
        with self.store.read() as session:
            return session.scalars(select(AcmeOrder).where(AcmeOrder.certificate_serial == serial)).first()

    def replacement_of(self, serial: str, *, other_than: str | None = None) -> AcmeOrder | None:
        """The order that replaced certificate `serial` (RFC 9773 `replaces`), being finalized or
        finalized; orders still pending, ready or invalid have not replaced it (yet)."""
        query = select(AcmeOrder).where(AcmeOrder.replaces == serial,
                                        AcmeOrder.status.in_(("processing", "valid")))
        if other_than is not None:
            query = query.where(AcmeOrder.id != other_than)
        with self.store.read() as session:
            return session.scalars(query.order_by(AcmeOrder.created_at)).first()

    def authorization(self, authz_id: str) -> AcmeAuthorization | None:
        with self.store.read() as session:
            return session.get(AcmeAuthorization, authz_id)

    def authorizations(self, ids: Sequence[str]) -> list[AcmeAuthorization]:
        with self.store.read() as session:
            query = select(AcmeAuthorization).where(AcmeAuthorization.id.in_(ids))
            found = {a.id: a for a in session.scalars(query)}
        return [found[i] for i in ids if i in found]

    def reusable_authorization(self, account_id: str, kind: str, value: str,
                               now: datetime) -> AcmeAuthorization | None:
        """A valid, unexpired authorization of this account for this identifier."""
        with self.store.read() as session:
            return session.scalars(select(AcmeAuthorization).where(
                AcmeAuthorization.account_id == account_id, AcmeAuthorization.identifier_type == kind,
                AcmeAuthorization.identifier_value == value, AcmeAuthorization.status == "valid",
                AcmeAuthorization.expires_at > now).order_by(AcmeAuthorization.expires_at.desc())).first()

    def challenges_of(self, authz_id: str) -> list[AcmeChallenge]:
        with self.store.read() as session:
            return list(session.scalars(select(AcmeChallenge)
                                        .where(AcmeChallenge.authorization_id == authz_id)
                                        .order_by(AcmeChallenge.type)))

    def challenge(self, challenge_id: str) -> AcmeChallenge | None:
        with self.store.read() as session:
            return session.get(AcmeChallenge, challenge_id)

    def start_challenge(self, challenge_id: str, authz_id: str, now: datetime) -> bool:
        """pending -> processing, if the authorization is still pending and unexpired."""
        with self.store.write() as session:
            authz = session.get(AcmeAuthorization, authz_id)
            if authz is None or authz.status != "pending" or authz.expires_at <= now:
                return False
            started = session.execute(update(AcmeChallenge)
                                      .where(AcmeChallenge.id == challenge_id,
                                             AcmeChallenge.status == "pending")
                                      .values(status="processing"))
            return bool(_rowcount(started))

    def finish_challenge(self, challenge_id: str, *, error: dict[str, Any] | None,
                         valid_until: datetime) -> None:
        """Record the validation's outcome on the challenge and its authorization (valid or invalid)."""
        now = utcnow()
        with self.store.write() as session:
            challenge = session.get(AcmeChallenge, challenge_id)
            assert challenge is not None
            challenge.status = "invalid" if error else "valid"
            challenge.error = json.dumps(error) if error else None
            challenge.validated_at = now
            authz = session.get(AcmeAuthorization, challenge.authorization_id)
            if authz is not None and authz.status == "pending":
                authz.status = challenge.status
                if not error:
                    authz.expires_at = valid_until

    def set_authorization_status(self, authz_id: str, status: str) -> None:
        with self.store.write() as session:
            session.execute(update(AcmeAuthorization).where(AcmeAuthorization.id == authz_id)
                            .values(status=status))

    def move_order(self, order_id: str, from_status: str, to_status: str, **values: Any) -> bool:
        """Change the order's status only if it is still `from_status`."""
        with self.store.write() as session:
            moved = session.execute(update(AcmeOrder)
                                    .where(AcmeOrder.id == order_id, AcmeOrder.status == from_status)
                                    .values(status=to_status, **values))
            return bool(_rowcount(moved))


__all__ = ["AcmeRepository", "new_id"]
