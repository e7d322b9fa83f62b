"""The ACME error map, the depth-limited JSON reader and the stateless nonces."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from enrollment.acme import jose
from enrollment.acme.nonces import Nonces
from enrollment.acme.problems import AcmeProblem, problem_for
from vpnca.errors import (
    ApprovalRequired,
    BadRequest,
    ConfigError,
    Conflict,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    PolicyViolation,
    SigningUnavailable,
    StoreUnavailable,
    public_message,
)

KEY = b"k" * 32


def problem_type(call: object) -> tuple[str, int]:
    with pytest.raises(AcmeProblem) as raised:
        call()  # type: ignore[operator]
    return raised.value.type, raised.value.status


@pytest.mark.parametrize(("error", "subject", "expected"), [
    (NotFound("no such order"), "request", ("malformed", 404)),
    (NotAuthenticated("who?"), "request", ("unauthorized", 403)),
    (NotAuthorized("not yours"), "request", ("unauthorized", 403)),
    (PolicyViolation("not in the domains"), "request", ("rejectedIdentifier", 400)),
    (BadRequest("bad"), "request", ("malformed", 400)),
    (Conflict("already"), "request", ("malformed", 409)),
    (BadRequest("bad name"), "identifier", ("rejectedIdentifier", 400)),
    (PolicyViolation("RSA-1024"), "csr", ("badCSR", 400)),
    (BadRequest("no proof of possession"), "csr", ("badCSR", 400)),
    (NotAuthorized("names not allowed"), "csr", ("rejectedIdentifier", 400)),
    (ApprovalRequired("profile gateway needs approval"), "csr", ("unauthorized", 403)),
    (NotAuthorized("not this account's"), "identifier", ("rejectedIdentifier", 400)),
    (Conflict("already revoked"), "revocation", ("alreadyRevoked", 400)),
    (NotFound("x"), "csr", ("malformed", 404)),  # what the subject does not name falls back to the table
])
def test_core_errors_map_to_one_problem_type_each(error: Exception, subject: str,
                                                  expected: tuple[str, int]) -> None:
    problem = problem_for(error, subject)  # type: ignore[arg-type]
    assert (problem.type, problem.status) == expected
    # the fixed text of the error's class: the exception's own text goes to the log only
    assert problem.detail == public_message(error) and str(error) not in problem.to_json()
    assert problem.cause is error  # what the edge logs and counts, once


def test_the_cas_own_troubles_are_503_with_retry_after_and_a_fixed_text() -> None:
    for error in (SigningUnavailable("token vpnca: DeviceRemoved at slot 0x2f"),
                  StoreUnavailable("the database cannot be reached: db.internal:5432")):
        problem = problem_for(error)
        assert (problem.type, problem.status) == ("serverInternal", 503)
        assert "Retry-After" in problem.headers
        assert "0x2f" not in problem.detail and "db.internal" not in problem.detail


def test_unexpected_errors_never_show_their_text() -> None:
    for error in (RuntimeError("secret at /srv/vpnca/x.py:12"), KeyError("private"), ConfigError("pin file")):
        problem = problem_for(error)
        assert problem.type == "serverInternal" and problem.status == 500
        assert str(error) not in problem.to_json()


@pytest.mark.parametrize("text", [
    "[" * 1000 + "]" * 1000,
    '{"a":' * 500 + "1" + "}" * 500,
    "[" * 33 + "]" * 33,
    "[" * 100_000,  # not even closed
])
def test_json_nested_too_deep_is_malformed_before_it_is_parsed(text: str) -> None:
    assert problem_type(lambda: jose.load_json(text.encode(), "payload")) == ("malformed", 400)


def test_json_up_to_the_depth_limit_and_brackets_in_strings_are_fine() -> None:
    assert jose.load_json("[" * 32 + "]" * 32, "x") == json.loads("[" * 32 + "]" * 32)
    tricky = {"a": "[[[[{{{{" * 20, "b": '\\"[[[[' * 10, "c": [[1], [2], [3]] * 50}
    assert jose.load_json(json.dumps(tricky).encode(), "x") == tricky
    assert problem_type(lambda: jose.load_json(b"\xff\xfe", "x")) == ("malformed", 400)


def test_deep_json_in_a_protected_header_or_a_payload_is_malformed() -> None:
    deep = ("[" * 1000 + "]" * 1000).encode()
    header = b'{"alg":"ES256","kid":"k","url":"u","x":' + deep + b"}"
    body = json.dumps({"protected": jose.b64url(header), "payload": "", "signature": ""}).encode()
    assert problem_type(lambda: jose.parse_jws(body)) == ("malformed", 400)
    body = json.dumps({"protected": jose.b64url(b'{"alg":"ES256","kid":"k","url":"u"}'),
                       "payload": jose.b64url(deep), "signature": ""}).encode()
    assert problem_type(lambda: jose.parse_jws(body).json_payload()) == ("malformed", 400)
    assert problem_type(lambda: jose.parse_jws(deep)) == ("malformed", 400)


def test_a_nonce_checks_by_its_mac_and_age_alone() -> None:
    loads: list[int] = []

    def key() -> bytes:
        loads.append(1)
        return KEY

    now = [1_800_000_000.0]
    nonces = Nonces(key, timedelta(hours=1), clock=lambda: now[0])
    nonce = nonces.make()
    checked = nonces.check(nonce)
    assert checked == nonces.check(nonce)  # checking does not use it: the replay set does (the store)
    assert checked.expires_at.timestamp() == now[0] + 3600
    other = Nonces(lambda: KEY, timedelta(hours=1), clock=lambda: now[0])  # another worker, the same key
    assert other.check(nonce) == checked
    assert len(loads) == 1
    forged = nonce[:-2] + ("A" if nonce[-2] != "A" else "B") + nonce[-1]
    assert problem_type(lambda: nonces.check(forged)) == ("badNonce", 400)
    another_key = Nonces(lambda: b"x" * 32, timedelta(hours=1))
    assert problem_type(lambda: another_key.check(nonce)) == ("badNonce", 400)
    for bad in (None, 7, "", "made-up", nonce + "A", "!" * len(nonce)):
        assert problem_type(lambda bad=bad: nonces.check(bad)) == ("badNonce", 400)
    now[0] += 3600  # expired
    assert problem_type(lambda: nonces.check(nonce)) == ("badNonce", 400)
    future = Nonces(lambda: KEY, timedelta(hours=1), clock=lambda: time.time() + 3600).make()
    assert problem_type(lambda: Nonces(lambda: KEY, timedelta(hours=1)).check(future)) == ("badNonce", 400)
