"""ACME (RFC 8555) over the one issuance core: accounts, orders, authorizations, challenges,
finalize, certificate download, revocation, key roll-over and deactivation.

Every POST is a JWS: `handle` authenticates it (URL, single-use nonce, key or account, signature),
then runs the resource's handler. Errors are AcmeProblem; core errors are mapped by
problems.problem_for, the one map (with what the request was about where that decides the type).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enrollment.acme import jose
from enrollment.acme.nonces import Nonces
from enrollment.acme.problems import AcmeProblem, bad_nonce, malformed, not_found, problem_for, unauthorized
from enrollment.acme.renewal_info import CertId, parse_cert_id, suggested_window
from enrollment.acme.validation import Identifier, Validator
from vpnca.config import AcmeSettings
from vpnca.credentials import Requester
from vpnca.enroll import Enrollment
from vpnca.errors import VpncaError
from vpnca.events import emit
from vpnca.identities import IkeIdentity
from vpnca.ports import AcmeAuthority
from vpnca.store import AcmeAccount, AcmeAuthorization, AcmeChallenge, AcmeOrder, CertStatus
from vpnca.store.acme import new_id
from vpnca.x509util import serial_hex, to_pem

log = logging.getLogger("vpnca.acme")

MAX_IDENTIFIERS = 100
# RFC 5280 reason codes an ACME client may give (RFC 8555 7.6); the others are the CA's own business
REVOCATION_REASONS = {0: "unspecified", 1: "keyCompromise", 3: "affiliationChanged", 4: "superseded",
                      5: "cessationOfOperation"}


@dataclass(frozen=True)
class Urls:
    """The URLs of this ACME server as the client reaches it (`https://host:port/acme`)."""

    base: str

    @property
    def directory(self) -> str:
        return f"{self.base}/directory"

    @property
    def new_nonce(self) -> str:
        return f"{self.base}/new-nonce"

    @property
    def new_account(self) -> str:
        return f"{self.base}/new-account"

    @property
    def new_order(self) -> str:
        return f"{self.base}/new-order"

    @property
    def revoke_cert(self) -> str:
        return f"{self.base}/revoke-cert"

    @property
    def key_change(self) -> str:
        return f"{self.base}/key-change"

    @property
    def renewal_info(self) -> str:
        return f"{self.base}/renewal-info"

    def account(self, account_id: str) -> str:
        return f"{self.base}/acct/{account_id}"

    def orders(self, account_id: str) -> str:
        return f"{self.base}/acct/{account_id}/orders"

    def order(self, order_id: str) -> str:
        return f"{self.base}/order/{order_id}"

    def finalize(self, order_id: str) -> str:
        return f"{self.base}/order/{order_id}/finalize"

    def authz(self, authz_id: str) -> str:
        return f"{self.base}/authz/{authz_id}"

    def challenge(self, challenge_id: str) -> str:
        return f"{self.base}/chall/{challenge_id}"

    def certificate(self, serial: str) -> str:
        return f"{self.base}/cert/{serial}"


@dataclass
class Reply:
    """What a handler answers: the HTTP status, a JSON object or raw bytes, and headers."""

    body: dict[str, Any] | bytes | None = None
    status: int = 200
    content_type: str = "application/json"
    location: str | None = None
    links: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Caller:
    """An authenticated JWS: the account (None for newAccount/revokeCert by certificate key) and its key."""

    jws: jose.Jws
    jwk: dict[str, Any]
    key: jose.PublicKey
    account: AcmeAccount | None
    client: str | None


def _ts(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _identity(identifier: Identifier) -> IkeIdentity:
    return IkeIdentity("fqdn" if identifier.type == "dns" else "ip", identifier.value)


def parse_identifiers(raw: Any) -> list[Identifier]:
    """newOrder identifiers: dns names (no wildcards) and IP addresses (RFC 8738), canonical, without
    duplicates."""
    if not isinstance(raw, list) or not raw:
        raise malformed("identifiers must be a non-empty list")
    if len(raw) > MAX_IDENTIFIERS:
        raise AcmeProblem("rejectedIdentifier", f"at most {MAX_IDENTIFIERS} identifiers per order")
    found: dict[Identifier, None] = {}
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("value"), str):
            raise malformed("each identifier needs a type and a value")
        kind, value = item.get("type"), item["value"]
        if kind not in ("dns", "ip"):
            raise AcmeProblem("unsupportedIdentifier", f"identifier type {kind!r} is not supported (dns, ip)")
        try:
            identity = IkeIdentity.parse(value)
        except VpncaError as exc:
            raise problem_for(exc, "identifier") from exc
        if (kind == "dns" and identity.kind != "fqdn") or (kind == "ip" and identity.kind != "ip"):
            raise AcmeProblem("malformed" if kind == "ip" else "rejectedIdentifier",
                              f"{value!r} is not a valid {kind} identifier")
        found[Identifier(kind, identity.value)] = None
    return list(found)


class AcmeService:
    """The ACME server's logic, synchronous (run in a worker thread per request)."""

    def __init__(self, door: AcmeAuthority, settings: AcmeSettings, website: str) -> None:
        self.door = door
        self.settings = settings
        self.website = website
        self.repo = door.acme_store()
        self.validator = Validator(self.settings)
        self._validations = ThreadPoolExecutor(max_workers=4, thread_name_prefix="acme-validate")
        self.nonces = Nonces(self.repo.nonce_key, self.settings.nonce_lifetime)
        # the keyIdentifier of the AKI in every certificate the sub-CA issues (a certID's first part)
        key_identifier = x509.AuthorityKeyIdentifier.from_issuer_public_key(
            door.issuer.public_key()).key_identifier  # type: ignore[arg-type]
        assert key_identifier is not None
        self.key_identifier: bytes = key_identifier

    # -- directory and nonces -------------------------------------------------------------------

    def directory(self, urls: Urls) -> dict[str, Any]:
        return {"newNonce": urls.new_nonce, "newAccount": urls.new_account, "newOrder": urls.new_order,
                "revokeCert": urls.revoke_cert, "keyChange": urls.key_change,
                "renewalInfo": urls.renewal_info,
                "meta": {"externalAccountRequired": self.settings.external_account_required,
                         "website": self.website}}

    def new_nonce(self) -> str:
        """A fresh nonce: made, not stored (see nonces.py)."""
        return self.nonces.make()

    # -- renewal information (RFC 9773) -------------------------------------------------------------

    def renewal_info(self, cert_id: str) -> tuple[dict[str, Any], int]:
        """GET renewalInfo/<certID>, unauthenticated: the suggested window and Retry-After (seconds)
        for any certificate of this CA in the register (ACME or not)."""
        parsed = parse_cert_id(cert_id)
        record = self.door.record(serial_hex(parsed.serial)) \
            if parsed.key_identifier == self.key_identifier else None
        if record is None or record.status not in (CertStatus.VALID, CertStatus.REVOKED):
            raise not_found("certificate")
        window = suggested_window(record, datetime.now(UTC))
        return ({"suggestedWindow": {"start": _ts(window.start), "end": _ts(window.end)}},
                max(60, int(window.retry_after.total_seconds())))

    # -- authentication ----------------------------------------------------------------------------

    def authenticate(self, body: bytes, url: str, urls: Urls, *, by: str, client: str | None) -> Caller:
        """Check a JWS as RFC 8555 6.2-6.5 say; `by` is "jwk", "kid" or "either". The nonce is checked
        (MAC, age) before the signature, and spent only once the signature verifies, so that nothing
        is written for a request that is not signed."""
        jws = jose.parse_jws(body)
        if jws.url != url:
            raise unauthorized(f"the JWS url {jws.url!r} is not the request URL {url}")
        nonce = self.nonces.check(jws.nonce)
        caller = self._signed_by(jws, urls, by=by, client=client)
        if not self.repo.use_nonce(nonce.nonce_id, nonce.expires_at):
            raise bad_nonce("the nonce was used already")
        return caller

    def _signed_by(self, jws: jose.Jws, urls: Urls, *, by: str, client: str | None) -> Caller:
        if jws.jwk is not None:
            if by == "kid":
                raise malformed("this request must be signed with the account key (kid), not jwk")
            key = jose.public_key(jws.jwk)
            jwk = jose.required_members(jws.jwk)
            jose.verify(jws, key)
            return Caller(jws, jwk, key, self.repo.account_by_thumbprint(jose.thumbprint(jwk)), client)
        if by == "jwk":
            raise malformed("this request must carry the new account's key (jwk), not kid")
        prefix = urls.account("")
        if not isinstance(jws.kid, str) or not jws.kid.startswith(prefix):
            raise AcmeProblem("accountDoesNotExist", f"kid {jws.kid!r} is not an account URL of this server")
        account = self.repo.account(jws.kid[len(prefix):])
        if account is None:
            raise AcmeProblem("accountDoesNotExist", f"no account {jws.kid}")
        if account.status != "valid":
            raise unauthorized(f"account {account.id} is {account.status}")
        jwk = json.loads(account.jwk)
        key = jose.public_key(jwk)
        jose.verify(jws, key)
        return Caller(jws, jwk, key, account, client)

    def handle(self, path: str, body: bytes, url: str, urls: Urls, client: str | None) -> Reply:
        """Route one POST to its handler."""
        parts = path.strip("/").split("/")
        routes: dict[str, tuple[str, Callable[..., Reply]]] = {
            "new-account": ("jwk", self.new_account), "new-order": ("kid", self.new_order),
            "revoke-cert": ("either", self.revoke_cert), "key-change": ("kid", self.key_change),
        }
        if len(parts) == 1 and parts[0] in routes:
            by, handler = routes[parts[0]]
            return handler(self.authenticate(body, url, urls, by=by, client=client), urls)
        resource_routes: dict[tuple[str, int], Callable[..., Reply]] = {
            ("acct", 2): self.account, ("acct", 3): self.account_orders, ("order", 2): self.order,
            ("order", 3): self.finalize, ("authz", 2): self.authorization, ("chall", 2): self.challenge,
            ("cert", 2): self.certificate,
        }
        handler_for = resource_routes.get((parts[0], len(parts)))
        if handler_for is None or (len(parts) == 3 and parts[2] not in ("orders", "finalize")):
            raise not_found("ACME resource")
        return handler_for(self.authenticate(body, url, urls, by="kid", client=client), urls, parts[1])

    # -- accounts --------------------------------------------------------------------------------

    def _account_object(self, account: AcmeAccount, urls: Urls) -> dict[str, Any]:
        return {"status": account.status, "contact": json.loads(account.contact),
                "orders": urls.orders(account.id)}

    def new_account(self, caller: Caller, urls: Urls) -> Reply:
        payload = caller.jws.json_payload()
        if caller.account is not None:
            if caller.account.status != "valid":
                raise unauthorized(f"account {caller.account.id} is {caller.account.status}")
            return Reply(self._account_object(caller.account, urls), 200,
                         location=urls.account(caller.account.id))
        if payload.get("onlyReturnExisting"):
            raise AcmeProblem("accountDoesNotExist", "no account has this key")
        contact = _contact(payload.get("contact", []))
        binding = payload.get("externalAccountBinding")
        allowed: tuple[IkeIdentity, ...] | None = None
        profile, eab_kid = self.settings.profile, None
        if binding is not None:
            eab = self._check_binding(binding, caller, urls)
            allowed, profile, eab_kid = eab.allowed_identities, eab.profile, eab.kid
        elif self.settings.external_account_required:
            raise AcmeProblem("externalAccountRequired", "this server needs an external account binding "
                              "(an operator makes one with `vpnca acme eab create`)")
        account = AcmeAccount(
            id=new_id(), key_thumbprint=jose.thumbprint(caller.jwk), jwk=jose.canonical_json(caller.jwk),
            status="valid", contact=json.dumps(contact), eab_kid=eab_kid,
            allowed_identities=allowed, profile=profile,
            created_at=datetime.now(UTC))
        created = self.repo.create_account(account)
        emit("acme.account", requester=f"acme:{created.id}", eab_kid=eab_kid, client=caller.client)
        status = 201 if created.id == account.id else 200
        return Reply(self._account_object(created, urls), status, location=urls.account(created.id))

    def _check_binding(self, binding: Any, caller: Caller, urls: Urls) -> Any:
        """RFC 8555 7.3.4: a JWS over the account key, MACed with the key `vpnca acme eab create` made."""
        if not isinstance(binding, dict):
            raise malformed("externalAccountBinding must be a JWS object")
        inner = jose.parse_jws(binding, algorithms=tuple(jose.EAB_ALGORITHMS))
        if inner.kid is None or inner.nonce is not None:
            raise malformed("the external account binding needs a kid and must not carry a nonce")
        if inner.url != urls.new_account:
            raise unauthorized("the external account binding is for another URL")
        eab = self.repo.eab_key(str(inner.kid))
        if eab is None:
            raise unauthorized(f"unknown external account key {inner.kid!r}")
        jose.verify_hmac(inner, eab.hmac_key)
        bound_jwk = jose.load_json(inner.payload, "the external account binding's payload")
        try:
            same_key = jose.thumbprint(bound_jwk) == jose.thumbprint(caller.jwk)
        except (ValueError, KeyError, TypeError) as exc:
            raise malformed("the external account binding's payload is not a JWK") from exc
        if not same_key:
            raise unauthorized("the external account binding is for another account key")
        if eab.account_id is not None:
            raise unauthorized(f"external account key {eab.kid} is already bound to an account")
        if eab.expires_at <= datetime.now(UTC):
            raise unauthorized(f"external account key {eab.kid} expired at {eab.expires_at.isoformat()}")
        return eab

    def _own_account(self, caller: Caller, account_id: str) -> AcmeAccount:
        assert caller.account is not None
        if caller.account.id != account_id:
            raise unauthorized("the JWS kid is not this account")
        return caller.account

    def account(self, caller: Caller, urls: Urls, account_id: str) -> Reply:
        account = self._own_account(caller, account_id)
        payload = caller.jws.json_payload()
        changes: dict[str, Any] = {}
        if "contact" in payload:
            changes["contact"] = json.dumps(_contact(payload["contact"]))
        if "status" in payload:
            if payload["status"] != "deactivated":
                raise malformed("an account's status can only be changed to deactivated")
            changes["status"] = "deactivated"
        if changes:
            account = self.repo.update_account(account.id, **changes)
            if changes.get("status"):
                emit("acme.account.deactivated", requester=f"acme:{account.id}", client=caller.client)
        return Reply(self._account_object(account, urls), location=urls.account(account.id))

    def account_orders(self, caller: Caller, urls: Urls, account_id: str) -> Reply:
        account = self._own_account(caller, account_id)
        return Reply({"orders": [urls.order(i) for i in self.repo.orders_of(account.id)]})

    def key_change(self, caller: Caller, urls: Urls) -> Reply:
        """RFC 8555 7.3.5: the inner JWS, signed by the new key, names the account and its old key."""
        account = caller.account
        assert account is not None
        document = caller.jws.json_payload()
        inner = jose.parse_jws(document)
        if inner.jwk is None:
            raise malformed("the inner keyChange JWS must carry the new key as jwk")
        if inner.url != caller.jws.url:
            raise malformed("the inner and outer keyChange JWS must have the same url")
        new_key = jose.public_key(inner.jwk)
        jose.verify(inner, new_key)
        request = inner.json_payload()
        if request.get("account") != urls.account(account.id):
            raise unauthorized("the keyChange request names another account")
        try:
            old_matches = jose.thumbprint(request.get("oldKey") or {}) == account.key_thumbprint
        except (KeyError, TypeError) as exc:
            raise malformed("oldKey is not a JWK") from exc
        if not old_matches:
            raise unauthorized("oldKey is not the account's current key")
        new_jwk = jose.required_members(inner.jwk)
        thumbprint = jose.thumbprint(new_jwk)
        holder = self.repo.account_by_thumbprint(thumbprint)
        if holder is not None:
            problem = AcmeProblem("malformed", "another account already uses the new key", 409)
            problem.headers["Location"] = urls.account(holder.id)
            raise problem
        account = self.repo.change_key(account.id, account.key_thumbprint, jose.canonical_json(new_jwk),
                                       thumbprint)
        emit("acme.account.key-changed", requester=f"acme:{account.id}", client=caller.client)
        return Reply(self._account_object(account, urls), location=urls.account(account.id))

    # -- orders ----------------------------------------------------------------------------------

    def _allowed(self, account: AcmeAccount) -> frozenset[IkeIdentity] | None:
        if account.allowed_identities is None:
            return None
        return frozenset(account.allowed_identities)

    def _requester(self, account: AcmeAccount) -> Requester:
        """The account as the core sees it: its identities, its profile; an account an operator bound
        with an external account key needs no further approval."""
        return Requester(name=f"acme:{account.id}", method="acme", allowed_identities=self._allowed(account),
                         profile=account.profile, preapproved=account.eab_kid is not None)

    def new_order(self, caller: Caller, urls: Urls) -> Reply:
        account = caller.account
        assert account is not None
        payload = caller.jws.json_payload()
        if payload.get("notBefore") or payload.get("notAfter"):
            raise malformed("notBefore and notAfter are not supported: the profile sets the lifetime")
        identifiers = parse_identifiers(payload.get("identifiers"))
        identities = tuple(_identity(i) for i in identifiers)
        try:
            self.door.may_request(self._requester(account), account.profile, identities)
        except VpncaError as exc:
            raise problem_for(exc, "identifier") from exc
        replaces = self._replaced_serial(account, payload["replaces"], identities) \
            if "replaces" in payload else None
        now = datetime.now(UTC)
        order_expires = now + self.settings.order_lifetime
        authz_ids: list[str] = []
        new_authzs: list[AcmeAuthorization] = []
        challenges: list[AcmeChallenge] = []
        for identifier in identifiers:
            reused = self.repo.reusable_authorization(account.id, identifier.type, identifier.value, now)
            if reused is not None:
                authz_ids.append(reused.id)
                continue
            authz = AcmeAuthorization(id=new_id(), account_id=account.id, identifier_type=identifier.type,
                                      identifier_value=identifier.value, status="pending",
                                      expires_at=order_expires)
            types = ("http-01", "dns-01") if identifier.type == "dns" else ("http-01",)
            challenges += [AcmeChallenge(id=new_id(), authorization_id=authz.id, type=t,
                                         token=secrets.token_urlsafe(32), status="pending") for t in types]
            new_authzs.append(authz)
            authz_ids.append(authz.id)
        order = AcmeOrder(
            id=new_id(), account_id=account.id, status="pending",
            identifiers=json.dumps([{"type": i.type, "value": i.value} for i in identifiers]),
            authorizations=json.dumps(authz_ids), expires_at=order_expires, created_at=now, replaces=replaces)
        self.repo.add_order(order, new_authzs, challenges)
        emit("acme.order", requester=f"acme:{account.id}", order=order.id,
             identity=[i.value for i in identifiers], client=caller.client, replaces=replaces)
        order = self._refresh(order)
        return Reply(self._order_object(order, urls), 201, location=urls.order(order.id))

    def _replaced_serial(self, account: AcmeAccount, raw: Any, identities: tuple[IkeIdentity, ...]) -> str:
        """RFC 9773 5: `replaces` names a certificate of this CA issued to this account, sharing an
        identifier with the new order, and not replaced already. Its serial."""
        if not isinstance(raw, str):
            raise malformed("replaces must be a certID string")
        cert_id = parse_cert_id(raw)
        serial = serial_hex(cert_id.serial)
        if cert_id.key_identifier != self.key_identifier:
            raise malformed(f"replaces names certificate {serial} of another CA")
        record = self.door.record(serial)
        issued_by = self.repo.order_with_certificate(serial)
        if record is None or issued_by is None:
            raise malformed(f"replaces names certificate {serial}, which this CA did not issue over ACME")
        if issued_by.account_id != account.id:
            raise unauthorized(f"certificate {serial} was issued to another account")
        if not set(record.identities) & set(identities):
            raise malformed(f"the order shares no identifier with certificate {serial}, which it replaces")
        self._check_not_replaced(serial)
        return serial

    def _check_not_replaced(self, serial: str, order_id: str | None = None) -> None:
        replacement = self.repo.replacement_of(serial, other_than=order_id)
        if replacement is not None:
            raise AcmeProblem("alreadyReplaced", f"certificate {serial} was replaced already (order "
                              f"{replacement.id})", 409)

    def _own_order(self, caller: Caller, order_id: str) -> AcmeOrder:
        order = self.repo.order(order_id)
        if order is None:
            raise not_found("order")
        assert caller.account is not None
        if order.account_id != caller.account.id:
            raise unauthorized("this order belongs to another account")
        return self._refresh(order)

    def _refresh(self, order: AcmeOrder) -> AcmeOrder:
        """Move a pending order on by its authorizations: ready when all are valid, invalid when one
        failed."""
        if order.status != "pending":
            return order
        now = datetime.now(UTC)
        authzs = self.repo.authorizations(json.loads(order.authorizations))
        failed = [a for a in authzs if _authz_status(a, now) not in ("pending", "valid")]
        if failed or order.expires_at <= now:
            error = {"type": "urn:ietf:params:acme:error:unauthorized", "status": 403,
                     "detail": f"authorization for {failed[0].identifier_value} is "
                               f"{_authz_status(failed[0], now)}" if failed else "the order expired"}
            self.repo.move_order(order.id, "pending", "invalid", error=json.dumps(error))
        elif all(_authz_status(a, now) == "valid" for a in authzs):
            self.repo.move_order(order.id, "pending", "ready")
        else:
            return order
        refreshed = self.repo.order(order.id)
        assert refreshed is not None
        return refreshed

    def _order_object(self, order: AcmeOrder, urls: Urls) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": order.status, "expires": _ts(order.expires_at),
            "identifiers": json.loads(order.identifiers),
            "authorizations": [urls.authz(i) for i in json.loads(order.authorizations)],
            "finalize": urls.finalize(order.id)}
        if order.error:
            body["error"] = json.loads(order.error)
        if order.certificate_serial:
            body["certificate"] = urls.certificate(order.certificate_serial)
        if order.replaces:
            body["replaces"] = str(CertId(self.key_identifier, int(order.replaces, 16)))
        return body

    def order(self, caller: Caller, urls: Urls, order_id: str) -> Reply:
        order = self._own_order(caller, order_id)
        return Reply(self._order_object(order, urls), location=urls.order(order.id))

    def finalize(self, caller: Caller, urls: Urls, order_id: str) -> Reply:
        account = caller.account
        assert account is not None
        order = self._own_order(caller, order_id)
        if order.status != "ready":
            raise AcmeProblem("orderNotReady", f"the order is {order.status}, not ready", 403)
        csr = _csr(caller.jws.json_payload().get("csr"))
        identities = tuple(_identity(Identifier(i["type"], i["value"]))
                           for i in json.loads(order.identifiers))
        _check_csr_names(csr, identities)
        processing = False

        def start_processing() -> None:  # the policy accepted: the order is now being finalized
            nonlocal processing
            if order.replaces:  # another order of the account replaced it meanwhile
                self._check_not_replaced(order.replaces, order.id)
            if not self.repo.move_order(order.id, "ready", "processing"):
                raise AcmeProblem("orderNotReady", "the order is being finalized already", 403)
            processing = True

        enrollment = Enrollment(
            csr=csr, profile=account.profile, protocol="acme", client=caller.client, identities=identities,
            can_wait=False, details=(("order", order.id),), renews=order.replaces,
            on_checked=start_processing)
        try:
            issued = self.door.enroll(self._requester(account), enrollment)
        except Exception as exc:
            error = problem_for(exc, "csr")  # what the order shows: the client's view, never internal text
            if processing:
                if error.status == 503:  # the token or the database is away: it may be finalized again
                    self.repo.move_order(order.id, "processing", "ready")
                else:
                    self.repo.move_order(order.id, "processing", "invalid", error=error.to_json())
            if isinstance(exc, VpncaError):
                raise error from exc
            raise
        self.repo.move_order(order.id, "processing", "valid", certificate_serial=issued.serial)
        refreshed = self.repo.order(order.id)
        assert refreshed is not None
        return Reply(self._order_object(refreshed, urls), location=urls.order(order.id))

    # -- authorizations and challenges --------------------------------------------------------------

    def _own_authorization(self, caller: Caller, authz_id: str) -> AcmeAuthorization:
        authz = self.repo.authorization(authz_id)
        if authz is None:
            raise not_found("authorization")
        assert caller.account is not None
        if authz.account_id != caller.account.id:
            raise unauthorized("this authorization belongs to another account")
        return authz

    def _challenge_object(self, challenge: AcmeChallenge, urls: Urls) -> dict[str, Any]:
        body: dict[str, Any] = {"type": challenge.type, "url": urls.challenge(challenge.id),
                                "status": challenge.status, "token": challenge.token}
        if challenge.validated_at:
            body["validated"] = _ts(challenge.validated_at)
        if challenge.error:
            body["error"] = json.loads(challenge.error)
        return body

    def authorization(self, caller: Caller, urls: Urls, authz_id: str) -> Reply:
        authz = self._own_authorization(caller, authz_id)
        payload = caller.jws.json_payload()
        if "status" in payload:
            if payload["status"] != "deactivated":
                raise malformed("an authorization's status can only be changed to deactivated")
            if authz.status in ("pending", "valid"):
                self.repo.set_authorization_status(authz.id, "deactivated")
                authz = self._own_authorization(caller, authz_id)
        now = datetime.now(UTC)
        return Reply({
            "identifier": {"type": authz.identifier_type, "value": authz.identifier_value},
            "status": _authz_status(authz, now), "expires": _ts(authz.expires_at),
            "challenges": [self._challenge_object(c, urls) for c in self.repo.challenges_of(authz.id)],
        }, location=urls.authz(authz.id))

    def challenge(self, caller: Caller, urls: Urls, challenge_id: str) -> Reply:
        """POST {} asks us to validate (asynchronously: the client polls); POST-as-GET reads it."""
        challenge = self.repo.challenge(challenge_id)
        if challenge is None:
            raise not_found("challenge")
        authz = self._own_authorization(caller, challenge.authorization_id)
        if caller.jws.payload:
            caller.jws.json_payload()
            if self.repo.start_challenge(challenge.id, authz.id, datetime.now(UTC)):
                key_authorization = f"{challenge.token}.{jose.thumbprint(caller.jwk)}"
                identifier = Identifier(authz.identifier_type, authz.identifier_value)
                self._validations.submit(self._validate, challenge.id, challenge.type, identifier,
                                         challenge.token, key_authorization, caller)
            elif challenge.status == "pending":
                raise malformed(f"the authorization is {_authz_status(authz, datetime.now(UTC))}")
        current = self.repo.challenge(challenge.id)
        assert current is not None
        return Reply(self._challenge_object(current, urls), links=[f'<{urls.authz(authz.id)}>;rel="up"'])

    def _validate(self, challenge_id: str, challenge_type: str, identifier: Identifier, token: str,
                  key_authorization: str, caller: Caller) -> None:
        error: dict[str, Any] | None = None
        try:
            self.validator.validate(challenge_type, identifier, token, key_authorization)
        except AcmeProblem as problem:
            error = problem.document()
        except Exception:  # a validator bug must still end the challenge, not leave it processing
            log.exception("validating challenge %s", challenge_id)
            error = AcmeProblem("serverInternal", "the validation failed on the server", 500).document()
        try:
            self.repo.finish_challenge(challenge_id, error=error,
                                       valid_until=datetime.now(UTC) + self.settings.authorization_lifetime)
        except Exception:
            log.exception("recording the result of challenge %s", challenge_id)
            return
        assert caller.account is not None
        emit("acme.challenge", logging.WARNING if error else logging.INFO,
             requester=f"acme:{caller.account.id}", identity=identifier.value, challenge=challenge_type,
             valid=error is None, detail=error["detail"] if error else None, client=caller.client)

    # -- certificates -----------------------------------------------------------------------------

    def certificate(self, caller: Caller, urls: Urls, serial: str) -> Reply:
        order = self.repo.order_with_certificate(serial)
        if order is None:
            raise not_found("certificate")
        assert caller.account is not None
        if order.account_id != caller.account.id:
            raise unauthorized("this certificate was issued to another account")
        record = self.door.record(serial)
        if record is None or record.der is None:
            raise not_found("certificate")
        chain = to_pem(x509.load_der_x509_certificate(record.der)) + to_pem(self.door.issuer)
        return Reply(chain, content_type="application/pem-certificate-chain")

    def revoke_cert(self, caller: Caller, urls: Urls) -> Reply:
        payload = caller.jws.json_payload()
        try:
            der = jose.b64url_decode(payload.get("certificate"), "certificate")
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise malformed("certificate is not a DER X.509 certificate") from exc
        reason_code = payload.get("reason", 0)
        if not isinstance(reason_code, int) or isinstance(reason_code, bool) \
                or reason_code not in REVOCATION_REASONS:
            raise AcmeProblem("badRevocationReason", f"reason {reason_code!r} is not one of "
                              f"{sorted(REVOCATION_REASONS)}")
        try:
            cert.verify_directly_issued_by(self.door.issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise unauthorized("this certificate was not issued by this CA") from exc
        serial = serial_hex(cert.serial_number)
        record = self.door.record(serial)
        if record is None:
            raise unauthorized(f"certificate {serial} is not in the register")
        actor = self._may_revoke(caller, cert, serial)
        if record.status == CertStatus.REVOKED:
            raise AcmeProblem("alreadyRevoked", f"certificate {serial} is already revoked")
        try:
            self.door.revoke(serial, REVOCATION_REASONS[reason_code], actor=actor)
        except VpncaError as exc:
            raise problem_for(exc, "revocation") from exc
        return Reply(None)

    def _may_revoke(self, caller: Caller, cert: x509.Certificate, serial: str) -> str:
        """RFC 8555 7.6: the certificate's own key, the account it was issued to, or an account that
        holds valid authorizations for all of its identifiers."""
        if caller.account is None:  # signed with a jwk: it must be the certificate's key
            spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            if caller.key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != spki:
                raise unauthorized("the JWS key is neither an account's key nor the certificate's key")
            return f"acme-key:{jose.thumbprint(caller.jwk)}"
        account = caller.account
        order = self.repo.order_with_certificate(serial)
        if order is not None and order.account_id == account.id:
            return f"acme:{account.id}"
        now = datetime.now(UTC)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [("dns", n) for n in san.get_values_for_type(x509.DNSName)] + \
                    [("ip", str(n)) for n in san.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            names = []
        if names and all(self.repo.reusable_authorization(account.id, kind, value, now)
                         for kind, value in names):
            return f"acme:{account.id}"
        raise unauthorized("this account neither holds this certificate nor authorizations for all its names")


def _authz_status(authz: AcmeAuthorization, now: datetime) -> str:
    if authz.status in ("pending", "valid") and authz.expires_at <= now:
        return "expired"
    return authz.status


def _contact(raw: Any) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise malformed("contact must be a list of URLs")
    for url in raw:
        if not url.startswith("mailto:") or "," in url or "?" in url or len(url) > 255:
            raise AcmeProblem("invalidContact", f"{url!r} is not a mailto: address")
    return list(raw)


def _csr(raw: Any) -> x509.CertificateSigningRequest:
    """The finalize CSR, readable; the core checks its signature and key (policy is checked once)."""
    try:
        csr = x509.load_der_x509_csr(jose.b64url_decode(raw, "csr"))
    except (ValueError, AcmeProblem) as exc:
        raise AcmeProblem("badCSR", "csr is not a base64url DER PKCS#10 request") from exc
    try:
        csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:  # a public key cryptography cannot read
        raise AcmeProblem("badCSR", "the CSR's public key cannot be read") from exc
    return csr


def _check_csr_names(csr: x509.CertificateSigningRequest, identities: tuple[IkeIdentity, ...]) -> None:
    """RFC 8555 7.4: the CSR asks for exactly the order's identifiers (a CN, if any, is one of them)."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    except ValueError as exc:
        raise AcmeProblem("badCSR", "the CSR has a malformed extension") from exc
    asked: set[IkeIdentity] = set()
    for name in san:
        if isinstance(name, x509.DNSName):
            asked.add(IkeIdentity("fqdn", name.value.lower().rstrip(".")))
        elif isinstance(name, x509.IPAddress):
            asked.add(IkeIdentity("ip", str(name.value)))
        else:
            raise AcmeProblem("badCSR",
                              f"the CSR asks for a {type(name).__name__}, which no order identifies")
    for cn in csr.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME):
        value = str(cn.value).lower().rstrip(".")
        if not any(i.value == value for i in identities):
            raise AcmeProblem("badCSR", f"the CSR's common name {value!r} is not an identifier of the order")
    if asked != set(identities):
        raise AcmeProblem("badCSR", "the CSR's names differ from the order's identifiers: asked "
                          f"{sorted(i.value for i in asked)}, ordered {sorted(i.value for i in identities)}")


__all__ = ["AcmeService", "Reply", "Urls", "parse_identifiers"]
