"""The signer on a real SoftHSM2 token."""

import threading

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from hsm import HsmError, KeySpec, open_token, read_pin
from hsm.softhsm import SoftHsmToken
from vpnca.issuer import token_key


@pytest.fixture(scope="module")
def token(softhsm: SoftHsmToken):  # type: ignore[no-untyped-def]
    return open_token(softhsm.module, softhsm.label, read_pin(softhsm.pin_file))


@pytest.mark.parametrize("algorithm", ["ec-p256", "ec-p384", "rsa-3072"])
def test_token_keys_sign_and_verify(token, algorithm: str) -> None:  # type: ignore[no-untyped-def]
    label = f"sign-test-{algorithm}"
    token.generate(KeySpec(label, algorithm))  # type: ignore[arg-type]
    key = token_key(token, label)
    data = b"to be signed"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
        key.public_key().verify(signature, data, ec.ECDSA(hashes.SHA256()))
    else:
        pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
        for pad in (padding.PKCS1v15(), pss):
            signature = key.sign(data, pad, hashes.SHA256())
            key.public_key().verify(signature, data, pad, hashes.SHA256())


def test_token_key_cannot_be_extracted(token, ca_home) -> None:  # type: ignore[no-untyped-def]
    label = ca_home.authority.key.label
    private = token.private_key(label)
    attrs = token.attributes(private, [pkcs11.Attribute.SENSITIVE, pkcs11.Attribute.EXTRACTABLE,
                                       pkcs11.Attribute.NEVER_EXTRACTABLE])
    assert attrs[pkcs11.Attribute.SENSITIVE] is True
    assert attrs[pkcs11.Attribute.EXTRACTABLE] is False
    assert attrs[pkcs11.Attribute.NEVER_EXTRACTABLE] is True
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        private[pkcs11.Attribute.VALUE]
    with pytest.raises(HsmError):
        ca_home.authority.key.private_bytes(None, None, None)
    # and the sub-CA certificate's public key is the token key's
    assert ca_home.hierarchy.sub.public_key() == ca_home.authority.key.public_key()


def test_duplicate_key_label_is_refused(token) -> None:  # type: ignore[no-untyped-def]
    token.generate(KeySpec("dup-label", "ec-p256"))
    with pytest.raises(HsmError, match="already"):
        token.generate(KeySpec("dup-label", "ec-p256"))


def test_concurrent_signing_is_serialised_and_correct(ca_home) -> None:  # type: ignore[no-untyped-def]
    key = ca_home.authority.key
    errors: list[BaseException] = []

    def sign_many() -> None:
        try:
            for i in range(50):
                data = f"message {i}".encode()
                sig = key.sign(data, ec.ECDSA(hashes.SHA384()))
                key.public_key().verify(sig, data, ec.ECDSA(hashes.SHA384()))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sign_many) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_pin_comes_from_environment_not_argv(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("VPNCA_PIN_FILE", raising=False)
    monkeypatch.delenv("VPNCA_PIN", raising=False)
    with pytest.raises(HsmError):
        read_pin(None)
    monkeypatch.setenv("VPNCA_PIN", "1234")
    assert read_pin(None) == "1234"
    pin_file = tmp_path / "pin"
    pin_file.write_text("5678\n")
    monkeypatch.setenv("VPNCA_PIN_FILE", str(pin_file))
    assert read_pin(None) == "5678"


def test_ca_certificates_are_signed_on_the_token(ca_home) -> None:  # type: ignore[no-untyped-def]
    sub, ocsp = ca_home.hierarchy.sub, ca_home.hierarchy.ocsp_signer
    ocsp.verify_directly_issued_by(sub)
    assert sub.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
