"""Delta CRLs clients can find: served at their own URL, named by the Freshest CRL extension of the
full CRL and of every leaf, and used by `openssl verify -crl_check -use_deltas`."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.conftest import RunningServer, make_ca_home, start_server, stop_server
from tests.helpers import require_tool, run


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, softhsm) -> Iterator[RunningServer]:  # type: ignore[no-untyped-def]
    ca = make_ca_home(tmp_path_factory.mktemp("delta") / "home", softhsm)
    with (ca.home / "vpnca.toml").open("a") as config:
        config.write("\n[crl]\ndelta = true\n")
    running = start_server(ca)
    yield running
    stop_server(running)
    ca.store.dispose()


def vpnca(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "vpnca.cli", *args], env=server.ca.env)


def fetch(server: RunningServer, path: str,
          out: Path) -> tuple[x509.CertificateRevocationList, dict[str, str]]:
    with urllib.request.urlopen(f"{server.http}{path}", timeout=30) as response:
        der = response.read()
        headers = {k.lower(): v for k, v in response.headers.items()}
    out.write_bytes(der)
    run([require_tool("openssl"), "crl", "-inform", "DER", "-in", str(out),
         "-out", str(out.with_suffix(".pem"))])
    return x509.load_der_x509_crl(der), headers


def test_openssl_finds_a_revocation_through_the_served_base_and_delta(server: RunningServer,
                                                                      tmp_path: Path) -> None:
    settings = server.ca.settings
    leaf = tmp_path / "leaf.pem"
    serial = vpnca(server, "issue", "--profile", "device", "--id", "delta1.example.com", "--out", str(leaf),
                   "--key-out", str(tmp_path / "leaf.key")).stdout.strip()
    freshest = x509.load_pem_x509_certificate(leaf.read_bytes()).extensions.get_extension_for_class(
        x509.FreshestCRL).value
    delta_path = f"/crl/{settings.ca.name}-delta.crl"
    assert freshest[0].full_name == [x509.UniformResourceIdentifier(f"{settings.http_base_url}{delta_path}")]

    assert "full CRL" in vpnca(server, "crl").stdout  # the base, before the revocation
    published = vpnca(server, "revoke", serial, "--reason", "keyCompromise").stdout
    assert "delta CRL" in published, published  # the CLI says which kind it published

    base, base_headers = fetch(server, f"/crl/{settings.ca.name}.crl", tmp_path / "base.crl")
    delta, delta_headers = fetch(server, delta_path, tmp_path / "delta.crl")
    assert base.get_revoked_certificate_by_serial_number(int(serial, 16)) is None
    assert delta.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    assert delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number == \
        base.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert base.extensions.get_extension_for_class(x509.FreshestCRL).value == freshest
    for headers in (base_headers, delta_headers):  # the same caching headers as the full CRL
        assert headers["content-type"] == "application/pkix-crl"
        assert "etag" in headers and "last-modified" in headers and "max-age=" in headers["cache-control"]

    chain = server.ca.home / "ca/chain.pem"
    openssl = require_tool("openssl")
    base_only = subprocess.run([openssl, "verify", "-crl_check", "-CAfile", str(chain), "-CRLfile",
                                str(tmp_path / "base.pem"), str(leaf)], capture_output=True, text=True,
                               check=False)
    assert base_only.returncode == 0, base_only.stdout + base_only.stderr  # the base alone does not know
    with_delta = subprocess.run([openssl, "verify", "-crl_check", "-use_deltas", "-CAfile", str(chain),
                                 "-CRLfile", str(tmp_path / "base.pem"),
                                 "-CRLfile", str(tmp_path / "delta.pem"), str(leaf)],
                                capture_output=True, text=True, check=False)
    assert with_delta.returncode != 0 and "certificate revoked" in with_delta.stdout + with_delta.stderr
