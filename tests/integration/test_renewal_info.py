"""ACME Renewal Information (RFC 9773) against a running `vpnca serve`: the `acme` library from PyPI
reads renewalInfo (ClientV2.renewal_time); `vpnca renew-early` moves the window to now for every
worker and machine (it is in the database); newOrder `replaces` links the new certificate to the old."""

from __future__ import annotations

import datetime as dt
import json
import re
import ssl
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from acme import client, errors, messages
from cryptography import x509
from josepy import json_util

from enrollment.acme.renewal_info import cert_id_of, parse_cert_id
from tests.conftest import RunningServer, make_ca_home, start_server, stop_server
from tests.helpers import run
from tests.integration.acme_peers import Http01Server, LoopbackDns, acme_peers
from tests.integration.test_acme import (
    LOOPBACK_IP,
    account_key,
    answer,
    configure_acme,
    deadline,
    eab_create,
    new_csr,
    register,
)
from vpnca.x509util import serial_hex

NAMES = ("ari1.example.com", "ari2.example.com", "ari3.example.com")


@pytest.fixture(scope="module")
def peers() -> Iterator[tuple[LoopbackDns, Http01Server]]:
    with acme_peers() as (dns_server, http_server):
        for name in NAMES:
            dns_server.records[(name, "A")] = [LOOPBACK_IP]
        yield dns_server, http_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, softhsm, peers) -> Iterator[RunningServer]:  # type: ignore[no-untyped-def]
    ca = make_ca_home(tmp_path_factory.mktemp("ari") / "home", softhsm)
    configure_acme(ca, *peers)
    running = start_server(ca)
    yield running
    stop_server(running)
    ca.store.dispose()


class NewOrderReplacing(messages.NewOrder):
    """newOrder with RFC 9773's `replaces`, which this `acme` release cannot send yet."""

    replaces: str = json_util.field("replaces", omitempty=True)


def order(acme: client.ClientV2, csr_pem: bytes, replaces: str) -> messages.OrderResource:
    """ClientV2.new_order, with `replaces`."""
    names = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name) for name in _dns_names(csr_pem)]
    response = acme._post(acme.directory["newOrder"], NewOrderReplacing(identifiers=names, replaces=replaces))
    body = messages.Order.from_json(response.json())
    assert response.json().get("replaces") == replaces
    authorizations = [acme._authzr_from_response(acme._post_as_get(url), uri=url)
                      for url in body.authorizations]
    return messages.OrderResource(body=body, uri=response.headers.get("Location"),
                                  authorizations=authorizations, csr_pem=csr_pem)


def _dns_names(csr_pem: bytes) -> list[str]:
    csr = x509.load_pem_x509_csr(csr_pem)
    return csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)


def enroll(acme: client.ClientV2, peers: tuple[LoopbackDns, Http01Server], name: str,
           replaces: str | None = None) -> x509.Certificate:
    _, csr = new_csr([name])
    placed = acme.new_order(csr) if replaces is None else order(acme, csr, replaces)
    answer(acme, placed, peers)
    done = acme.poll_and_finalize(placed, deadline())
    return x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]


def pem(certificate: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return certificate.public_bytes(Encoding.PEM)


def renewal_info(server: RunningServer, certificate: x509.Certificate | str) -> httpx.Response:
    cert_id = certificate if isinstance(certificate, str) else str(cert_id_of(certificate))
    return httpx.get(f"https://localhost:{server.https_port}/acme/renewal-info/{cert_id}",
                     verify=ssl.create_default_context(cafile=str(server.ca.home / "ca/root.pem")),
                     timeout=30)


def window(response: httpx.Response) -> tuple[dt.datetime, dt.datetime]:
    assert response.status_code == 200, response.text
    suggested = response.json()["suggestedWindow"]
    return dt.datetime.fromisoformat(suggested["start"]), dt.datetime.fromisoformat(suggested["end"])


def test_renewal_info_window_then_renew_early_moves_it_to_now(server: RunningServer, peers) -> None:  # type: ignore[no-untyped-def]
    acme = register(server, account_key(), eab_create(server.ca, *NAMES))
    assert acme.directory["renewalInfo"] == f"https://localhost:{server.https_port}/acme/renewal-info"
    cert = enroll(acme, peers, NAMES[0])
    other = enroll(acme, peers, NAMES[1])
    now = dt.datetime.now(dt.UTC)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc

    # the usual window: about 2/3 into the lifetime, the same on every ask, moved by the serial
    response = renewal_info(server, cert)
    start, end = window(response)
    assert int(response.headers["Retry-After"]) > 0
    born = cert.not_valid_before_utc
    assert born + lifetime / 2 < start < born + lifetime * 2 / 3 < end < cert.not_valid_after_utc
    assert window(renewal_info(server, cert)) == (start, end)
    assert window(renewal_info(server, other)) != (start, end)  # another serial, another place
    renew_at, next_ask = acme.renewal_time(pem(cert))  # the acme library picks a moment in the window
    assert renew_at is not None and start <= renew_at <= end and renew_at > now
    assert next_ask > dt.datetime.now()
    assert not server.ca.store.renew_early_due(serial_hex(cert.serial_number))

    # the operator asks every holder to renew now: the window starts in the past
    out = run([sys.executable, "-m", "vpnca.cli", "renew-early", "--all", "--json"], env=server.ca.env).stdout
    marked = json.loads(out)["marked"]
    assert serial_hex(cert.serial_number) in marked and serial_hex(other.serial_number) in marked
    start, end = window(renewal_info(server, cert))
    assert start <= dt.datetime.now(dt.UTC) and end <= start + dt.timedelta(hours=1)
    renew_at, _ = acme.renewal_time(pem(cert))
    assert renew_at is not None and renew_at <= end
    assert server.ca.store.renew_early_due(serial_hex(cert.serial_number))
    audit = [e for e in server.ca.store.audit_entries() if e.action == "renew-early"]
    assert audit and serial_hex(cert.serial_number) in json.loads(audit[-1].details)["serials"]


def test_renew_early_by_serial_or_profile_and_unknown_cert_ids(server: RunningServer, peers) -> None:  # type: ignore[no-untyped-def]
    acme = register(server, account_key(), eab_create(server.ca, *NAMES))
    cert = enroll(acme, peers, NAMES[2])
    serial = serial_hex(cert.serial_number)
    start, _ = window(renewal_info(server, cert))
    assert start > dt.datetime.now(dt.UTC)
    run([sys.executable, "-m", "vpnca.cli", "renew-early", "--serial", serial], env=server.ca.env)
    early, _ = window(renewal_info(server, cert))
    assert early <= dt.datetime.now(dt.UTC)
    out = run([sys.executable, "-m", "vpnca.cli", "renew-early", "--profile", "gateway", "--json"],
              env=server.ca.env).stdout
    assert serial not in json.loads(out)["marked"]  # marked already: it keeps its moment
    assert window(renewal_info(server, cert))[0] == early

    good = cert_id_of(cert)
    for bad, status in [("nodot", 400), ("a=.AQ", 400), (f"{str(good).split('.')[0]}.AQ", 404),
                        ("AAAA." + str(good).split(".")[1], 404), (str(good).split(".")[0] + ".gA", 400)]:
        response = renewal_info(server, bad)
        assert response.status_code == status, (bad, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["type"] == "urn:ietf:params:acme:error:malformed"
    assert parse_cert_id(str(good)) == good


def test_replaces_links_the_new_certificate_to_the_one_it_replaces(server: RunningServer, peers) -> None:  # type: ignore[no-untyped-def]
    eab = eab_create(server.ca, *NAMES)
    acme = register(server, account_key(), eab)
    old = enroll(acme, peers, NAMES[0])
    old_id = str(cert_id_of(old))
    new = enroll(acme, peers, NAMES[0], replaces=old_id)
    old_serial, new_serial = serial_hex(old.serial_number), serial_hex(new.serial_number)
    renews = [json.loads(e.details) for e in server.ca.store.audit_entries()]
    assert any(d.get("serial") == new_serial and d.get("renews") == old_serial for d in renews)
    assert re.search(rf"certificate\.renewed.*{new_serial}", server.log.read_text())

    def refused(replaces: Any, by: client.ClientV2 = acme) -> messages.Error:
        _, csr = new_csr([NAMES[0]])
        with pytest.raises(messages.Error) as error:
            order(by, csr, replaces)
        return error.value

    _, csr = new_csr([NAMES[0]])
    with pytest.raises(errors.ConflictError):  # 409: replaced once, not again
        order(acme, csr, old_id)
    assert '"problem":"alreadyReplaced"' in server.log.read_text().replace(" ", "")
    assert refused("not-a-cert-id").code == "malformed"
    assert refused(str(cert_id_of(new)).split(".")[0] + ".AQ").code == "malformed"  # no such certificate
    stranger = register(server, account_key(), eab_create(server.ca, *NAMES))
    assert refused(str(cert_id_of(new)), stranger).code == "unauthorized"  # another account's certificate
    other_name = enroll(acme, peers, NAMES[1])
    _, csr = new_csr([NAMES[2]])
    with pytest.raises(messages.Error) as disjoint:
        order(acme, csr, str(cert_id_of(other_name)))
    assert disjoint.value.code == "malformed"  # no identifier in common
