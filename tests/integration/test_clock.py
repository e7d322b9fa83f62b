"""The core's injected clock: validity periods, renewal windows, revocation times and CRL timing follow
it, so none of these tests sleeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import CaHome
from vpnca.authority import Authority, IssueRequest
from vpnca.clock import FrozenClock
from vpnca.crl import generate_crl
from vpnca.gateway.credentials import GatewayFiles, enroll_gateway, needs_renewal
from vpnca.identities import IkeIdentity
from vpnca.issuer import BACKDATE

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)


def frozen_authority(ca: CaHome, clock: FrozenClock) -> Authority:
    return Authority(ca.settings, ca.store, ca.authority.certificate, ca.authority.key, clock)


def issue(authority: Authority, name: str, lifetime: timedelta | None = None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return authority.issue(IssueRequest(profile="device", identities=(IkeIdentity.parse(name),),
                                        public_key=key.public_key(), requester="test",
                                        lifetime=lifetime)).certificate


def test_validity_is_read_from_the_authority_clock(ca_home: CaHome) -> None:
    authority = frozen_authority(ca_home, FrozenClock(T0))
    certificate = issue(authority, "clocked.example.com")
    assert certificate.not_valid_before_utc == T0 - BACKDATE
    assert certificate.not_valid_after_utc == T0 + ca_home.settings.profiles["device"].lifetime


def test_a_certificate_issued_in_the_past_is_expired_at_once(ca_home: CaHome) -> None:
    authority = frozen_authority(ca_home, FrozenClock(datetime.now(UTC) - timedelta(hours=1)))
    certificate = issue(authority, "expired.example.com", lifetime=timedelta(seconds=1))
    assert certificate.not_valid_after_utc < datetime.now(UTC)


def test_the_gateway_renewal_window_opens_at_two_thirds_of_the_lifetime(ca_home: CaHome) -> None:
    clock = FrozenClock(T0)
    authority = frozen_authority(ca_home, clock)
    enroll_gateway(authority, "vpn.example.com", requester="test")  # 30 days, renewal at 20 ± 1.5
    files = GatewayFiles.of(authority.settings)
    clock.advance(timedelta(days=18))
    assert not needs_renewal(authority, files)
    clock.advance(timedelta(days=4))
    assert needs_renewal(authority, files)


def test_revocation_time_and_crl_timing_follow_the_clock(ca_home: CaHome) -> None:
    clock = FrozenClock(T0)
    authority = frozen_authority(ca_home, clock)
    certificate = issue(authority, "revoked.example.com")
    revoked_at = clock.advance(timedelta(hours=2))
    record = authority.revoke(format(certificate.serial_number, "x"), "keyCompromise", actor="test")
    assert record.revoked_at is not None and record.revoked_at.replace(tzinfo=UTC) == revoked_at
    this_update = clock.advance(timedelta(minutes=30))
    crl = generate_crl(authority, actor="test").crl
    assert crl.last_update_utc == this_update
    assert crl.next_update_utc == this_update + ca_home.settings.crl.next_update
    entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
    assert entry is not None and entry.revocation_date_utc == revoked_at
