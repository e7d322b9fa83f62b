"""Profiles read from vpnca.toml into what the core and EST ask of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from asn1crypto import core
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from enrollment.est import CsrAttrs, csr_attributes, server_key_algorithm
from vpnca.config import settings_from_dict
from vpnca.errors import BadRequest, NotAuthorized, PolicyViolation
from vpnca.profiles import ID_KP_IPSEC_IKE, IKE_INTERMEDIATE, Profile, get_profile, profiles_for


def profile(name: str, **table: object) -> Profile:
    settings = settings_from_dict(Path("/nonexistent"), {"profiles": {name: table}} if table else {})
    return get_profile(settings, name)


def test_the_built_in_profiles_keep_todays_facts() -> None:
    gateway, device, service = profile("gateway"), profile("device"), profile("service")
    assert gateway.extended_key_usages == (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH,
                                           ID_KP_IPSEC_IKE, IKE_INTERMEDIATE)
    assert device.extended_key_usages == (ExtendedKeyUsageOID.CLIENT_AUTH, ID_KP_IPSEC_IKE)
    assert (gateway.preferred_key_type, device.preferred_key_type) == ("ec-p384", "ec-p256")
    assert service.server_names_only and service.protocols == frozenset()
    assert set(profiles_for(settings_from_dict(Path("/nonexistent"), {}), "est")) == {"device", "gateway"}


def test_key_usage_is_the_configured_one_plus_key_encipherment_for_rsa() -> None:
    merchant = profile("merchant", key_usages=["digitalSignature", "keyAgreement"])
    ec_usage = merchant.key_usage(ec.generate_private_key(ec.SECP256R1()).public_key())
    assert ec_usage.digital_signature and ec_usage.key_agreement and not ec_usage.key_encipherment
    rsa_usage = merchant.key_usage(rsa.generate_private_key(65537, 2048).public_key())
    assert rsa_usage.key_encipherment and not rsa_usage.key_cert_sign


def test_key_types_and_protocols_are_enforced() -> None:
    merchant = profile("merchant", key_types=["ec-p384"], protocols=["est"])
    merchant.check_key_type(ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(PolicyViolation, match="accepts ec-p384 keys, not ec-p256"):
        merchant.check_key_type(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(PolicyViolation, match="not ed25519"):
        merchant.check_key_type(ed25519.Ed25519PrivateKey.generate().public_key())
    merchant.check_protocol("est")
    merchant.check_protocol("cli")
    with pytest.raises(NotAuthorized, match="not issued over SCEP"):
        merchant.check_protocol("scep")
    with pytest.raises(BadRequest, match="unknown profile 'nope'"):
        profile("nope")


def test_csrattrs_and_serverkeygen_follow_the_first_key_type() -> None:
    def oids(p: Profile) -> list[bytes]:
        return [item.chosen.dump() for item in CsrAttrs.load(csr_attributes(p))]

    gateway = oids(profile("gateway"))
    assert core.ObjectIdentifier("1.2.840.10045.4.3.3").dump() in gateway  # ecdsa-with-SHA384
    assert core.ObjectIdentifier("1.2.840.10045.4.3.2").dump() in oids(profile("device"))
    sha256_with_rsa = core.ObjectIdentifier("1.2.840.113549.1.1.11").dump()
    assert oids(profile("rsa-only", key_types=["rsa"])) == [sha256_with_rsa]  # no key attribute
    assert server_key_algorithm(profile("gateway")) == "ec-p384"
    assert server_key_algorithm(profile("rsa-first", key_types=["rsa", "ec-p256"])) == "rsa-3072"
    with pytest.raises(BadRequest, match="no key type serverkeygen makes"):
        server_key_algorithm(profile("ed-only", key_types=["ed25519"]))
