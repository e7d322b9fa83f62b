"""Revocation at scale: CRLs assembled from stored entry DER (checked by cryptography and openssl),
the same reason in OCSP and CRL, partitioned CRLs served and re-signed one shard at a time, and
coalesced publication of a burst of revocations."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from sqlalchemy import update

from ocsp.service import load_ocsp_service
from tests.conftest import CaHome, RunningServer, make_ca_home, stop_server, wait_for_port
from tests.helpers import free_port, require_tool, run
from vpnca.authority import Authority, IssuedCertificate, IssueRequest
from vpnca.config import load_settings
from vpnca.crl import generate_crl
from vpnca.crlshards import shard_name
from vpnca.identities import IkeIdentity
from vpnca.revocation import Publisher
from vpnca.store import CertificateRecord


def issue(ca: CaHome, name: str, authority: Authority | None = None,
          lifetime: timedelta | None = None) -> IssuedCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return (authority or ca.authority).issue(IssueRequest(
        profile="device", identities=(IkeIdentity.parse(f"{name}.example.com"),), public_key=key.public_key(),
        requester="test", lifetime=lifetime))


def pem(path: Path, obj: x509.Certificate | x509.CertificateRevocationList) -> Path:
    path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    return path


def openssl_verify(ca: CaHome, leaf: Path, *crls: Path) -> subprocess.CompletedProcess[str]:
    files = [arg for crl in crls for arg in ("-CRLfile", str(crl))]
    return subprocess.run([require_tool("openssl"), "verify", "-crl_check", "-CAfile",
                           str(ca.home / "ca/chain.pem"), *files, str(leaf)],
                          capture_output=True, text=True, check=False)


def test_crl_built_from_stored_entries_is_valid_for_cryptography_and_openssl(any_ca_home: CaHome,
                                                                           tmp_path: Path) -> None:
    ca = any_ca_home  # the entries are concatenated by the database: SQLite and PostgreSQL
    when = datetime.now(UTC) - timedelta(days=1)
    leaves = {reason: issue(ca, reason.lower()) for reason in ("keyCompromise", "unspecified", "superseded")}
    for reason, leaf in leaves.items():
        ca.authority.revoke(leaf.serial, reason, actor="test",
                            invalidity_date=when if reason == "superseded" else None)
    held = issue(ca, "held")
    ca.authority.revoke(held.serial, "certificateHold", actor="test")
    good = issue(ca, "good")
    with ca.store.write() as session:  # revoked before entries were kept (a database from r0004)
        session.execute(update(CertificateRecord).where(CertificateRecord.serial == held.serial)
                        .values(crl_entry=None))
    crl = generate_crl(ca.authority, actor="test").crl
    assert ca.store.get_certificate(held.serial).crl_entry is not None  # type: ignore[union-attr]

    assert crl.is_signature_valid(ca.hierarchy.sub.public_key())  # type: ignore[arg-type]
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number >= 1
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical and idp.value.full_name == [x509.UniformResourceIdentifier(ca.settings.crl_url)]
    assert len(crl) == 4
    key_compromise = crl.get_revoked_certificate_by_serial_number(int(leaves["keyCompromise"].serial, 16))
    assert key_compromise is not None
    assert key_compromise.extensions.get_extension_for_class(x509.CRLReason).value.reason \
        == x509.ReasonFlags.key_compromise
    superseded = crl.get_revoked_certificate_by_serial_number(int(leaves["superseded"].serial, 16))
    assert superseded is not None
    assert superseded.extensions.get_extension_for_class(x509.InvalidityDate).value.invalidity_date_utc \
        == when.replace(microsecond=0)
    on_hold = crl.get_revoked_certificate_by_serial_number(int(held.serial, 16))
    assert on_hold is not None
    assert on_hold.extensions.get_extension_for_class(x509.CRLReason).value.reason \
        == x509.ReasonFlags.certificate_hold

    crl_pem = pem(tmp_path / "crl.pem", crl)
    run([require_tool("openssl"), "crl", "-in", str(crl_pem), "-noout", "-CAfile",
         str(ca.home / "ca/chain.pem")])  # openssl checks the signature ("verify OK")
    revoked = openssl_verify(ca, pem(tmp_path / "kc.pem", leaves["keyCompromise"].certificate), crl_pem)
    assert revoked.returncode != 0 and "certificate revoked" in revoked.stdout + revoked.stderr
    fine = openssl_verify(ca, pem(tmp_path / "good.pem", good.certificate), crl_pem)
    assert fine.returncode == 0, fine.stdout + fine.stderr


def test_ocsp_and_crl_give_the_same_revocation_reason(ca_home: CaHome) -> None:
    ca = ca_home
    service = load_ocsp_service(ca.settings, ca.store)
    leaves = {reason: issue(ca, f"reason-{reason.lower()}")
              for reason in ("unspecified", "keyCompromise", "cessationOfOperation")}
    for reason, leaf in leaves.items():
        ca.authority.revoke(leaf.serial, reason, actor="test")
    service.presign_serials([leaf.serial for leaf in leaves.values()])
    crl = generate_crl(ca.authority, actor="test").crl
    for leaf in leaves.values():
        request = ocsp.OCSPRequestBuilder().add_certificate(
            leaf.certificate, ca.hierarchy.sub, hashes.SHA1()).build()
        answer = ocsp.load_der_ocsp_response(service.respond(
            request.public_bytes(serialization.Encoding.DER)).body)
        entry = crl.get_revoked_certificate_by_serial_number(int(leaf.serial, 16))
        assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED and entry is not None
        try:
            crl_reason: x509.ReasonFlags | None = entry.extensions.get_extension_for_class(
                x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            crl_reason = None
        assert answer.revocation_reason == crl_reason  # `unspecified`: absent from both
        assert answer.revocation_time_utc == entry.revocation_date_utc
    unspecified = crl.get_revoked_certificate_by_serial_number(int(leaves["unspecified"].serial, 16))
    assert unspecified is not None and len(unspecified.extensions) == 0


@pytest.fixture
def sharded(tmp_path: Path, softhsm) -> Iterator[CaHome]:  # type: ignore[no-untyped-def]
    ca = make_ca_home(tmp_path / "home", softhsm)
    with (ca.home / "vpnca.toml").open("a") as config:
        config.write("\n[crl]\nshards = 4\n")
    settings = load_settings(ca.home)
    sharded = CaHome(settings, ca.store, ca.hierarchy, Authority.open(settings, ca.store), ca.env)
    yield sharded
    ca.store.dispose()


def latest_numbers(ca: CaHome) -> dict[str, int]:
    names = [ca.settings.ca.name, *(shard_name(ca.settings, k) for k in range(ca.settings.crl.shards))]
    return {name: record.number for name in names if (record := ca.store.latest_crl(name)) is not None}


def test_partitioned_crls_are_served_and_a_revoke_re_signs_only_its_shard(sharded: CaHome,
                                                                         tmp_path: Path) -> None:
    ca = sharded
    # lifetimes a day apart: expiry windows of a day, so each leaf lands in another shard
    leaves = [issue(ca, f"shard{days}", lifetime=timedelta(days=days)) for days in (1, 2, 3)]
    shards = [ca.store.get_certificate(leaf.serial).crl_shard for leaf in leaves]  # type: ignore[union-attr]
    assert None not in shards and len(set(shards)) == 3
    for leaf, shard in zip(leaves, shards, strict=True):
        cdp = leaf.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        assert cdp[0].full_name == [x509.UniformResourceIdentifier(
            f"{ca.settings.http_base_url}/crl/{shard_name(ca.settings, shard)}.crl")]  # type: ignore[arg-type]
    generate_crl(ca.authority, actor="test")  # the whole CRL and every shard's
    before = latest_numbers(ca)
    assert len(before) == 1 + 4

    published = Publisher(ca.authority).publish_revocation(
        ca.authority.revoke(leaves[0].serial, "keyCompromise", actor="test").serial, "test")
    after = latest_numbers(ca)
    revoked_shard = shard_name(ca.settings, shards[0])  # type: ignore[arg-type]
    assert published.name == revoked_shard
    assert {name for name in after if after[name] != before[name]} == {revoked_shard}

    port = free_port()
    log = tmp_path / "ocsp.log"
    process = subprocess.Popen([sys.executable, "-m", "vpnca.cli", "ocsp", "serve", "--port", str(port)],
                               env=ca.env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log)
        for leaf, shard in zip(leaves[:2], shards[:2], strict=True):
            url = f"http://127.0.0.1:{port}/crl/{shard_name(ca.settings, shard)}.crl"  # type: ignore[arg-type]
            with urllib.request.urlopen(url, timeout=30) as response:
                served = x509.load_der_x509_crl(response.read())
            idp = served.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
            assert idp.full_name == leaf.certificate.extensions.get_extension_for_class(
                x509.CRLDistributionPoints).value[0].full_name  # the IDP matches the leaf's CDP
            crl_file = pem(tmp_path / f"shard{shard}.pem", served)
            result = openssl_verify(ca, pem(tmp_path / f"leaf{shard}.pem", leaf.certificate), crl_file)
            if leaf is leaves[0]:
                assert result.returncode != 0 and "certificate revoked" in result.stdout + result.stderr
            else:
                assert result.returncode == 0, result.stdout + result.stderr
    finally:
        stop_server(RunningServer(ca, 0, port, process, log))


def test_a_burst_of_revocations_is_published_together(ca_home: CaHome) -> None:
    ca = ca_home
    publisher = Publisher(ca.authority)
    leaves = [issue(ca, f"burst{i}") for i in range(6)]
    first = ca.store.next_crl_number()
    results: dict[str, int] = {}

    def revoke(serial: str) -> None:
        ca.authority.revoke(serial, "keyCompromise", actor="test")
        results[serial] = publisher.publish_revocation(serial, "test").number

    with publisher._lock:  # a publication is running: the burst collects behind it
        publisher._running = True
    threads = [threading.Thread(target=revoke, args=(leaf.serial,)) for leaf in leaves]
    for thread in threads:
        thread.start()
    deadline = datetime.now(UTC) + timedelta(seconds=60)
    while len(publisher._collecting.serials) < len(leaves):
        assert datetime.now(UTC) < deadline, "the revocations did not reach the publisher"
        threading.Event().wait(0.01)
    with publisher._lock:  # the running publication ends
        publisher._running = False
        publisher._lock.notify_all()
    for thread in threads:
        thread.join(timeout=60)
    assert set(results.values()) == {first}  # one CRL for the six
    assert ca.store.next_crl_number() == first + 1
    crl = x509.load_der_x509_crl(ca.store.latest_crl(ca.settings.ca.name).der)  # type: ignore[union-attr]
    assert {leaf.serial for leaf in leaves} <= {format(r.serial_number, "x") for r in crl}


def test_a_crl_number_taken_meanwhile_is_signed_again_with_the_next(ca_home: CaHome,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Two publishers (the hourly CRL and a revocation's, in two processes) read the same next number:
    the one that records second signs again with a fresh number instead of failing."""
    ca = ca_home
    read_number = ca.store.next_crl_number
    raced = False

    def read_then_lose_the_race() -> int:
        nonlocal raced
        number = read_number()
        if not raced:
            raced = True
            generate_crl(ca.authority, actor="other-publisher")  # records `number` first
        return number

    taken = read_number()
    monkeypatch.setattr(ca.store, "next_crl_number", read_then_lose_the_race)
    published = generate_crl(ca.authority, actor="test")
    assert published.number > taken
    served = x509.load_der_x509_crl((ca.home / "crl" / f"{ca.settings.ca.name}.crl").read_bytes())
    for crl in (published.crl, served):
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == published.number
