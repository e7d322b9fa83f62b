"""One error taxonomy, one map per protocol: every error a client can cause has its answer in each
table (never the bug path), the CA's own troubles are 'try later' everywhere, and no answer carries
the exception's text."""

from __future__ import annotations

import pytest

from enrollment import est, scep
from enrollment.acme.problems import problem_for
from hsm import HsmUnavailable
from ocsp.service import ocsp_status_for
from vpnca.errors import (
    ApprovalRequired,
    BadRequest,
    Conflict,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    PolicyViolation,
    SigningUnavailable,
    StoreUnavailable,
    VpncaError,
    public_message,
    reason_of,
    token_errors,
)

SECRET_TEXT = "detail 0xdeadbeef at /srv/vpnca/db.sqlite"
CLIENT_ERRORS: list[VpncaError] = [cls(SECRET_TEXT) for cls in (
    NotAuthenticated, ApprovalRequired, NotAuthorized, PolicyViolation, BadRequest, NotFound, Conflict)]
OUTAGES: list[VpncaError] = [StoreUnavailable(SECRET_TEXT), SigningUnavailable(SECRET_TEXT)]


@pytest.mark.parametrize("error", CLIENT_ERRORS, ids=lambda e: type(e).__name__)
def test_a_clients_error_has_its_own_answer_in_every_protocol(error: VpncaError) -> None:
    assert 400 <= est.status_for(error) < 500
    assert scep.fail_info_for(error) is not None
    problem = problem_for(error)
    assert 400 <= problem.status < 500 and problem.type != "serverInternal"
    assert reason_of(error) != "error"


@pytest.mark.parametrize("error", OUTAGES, ids=lambda e: type(e).__name__)
def test_the_cas_own_troubles_are_try_later_in_every_protocol(error: VpncaError) -> None:
    assert est.status_for(error) == 503
    assert scep.fail_info_for(error) == (scep.BAD_REQUEST, "unavailable")  # a CertRep, never HTTP 500
    assert (problem_for(error).type, problem_for(error).status) == ("serverInternal", 503)
    assert ocsp_status_for(error) == "try_later"


ANY_ERROR: list[Exception] = [*CLIENT_ERRORS, *OUTAGES, VpncaError(SECRET_TEXT), RuntimeError(SECRET_TEXT)]


@pytest.mark.parametrize("error", ANY_ERROR, ids=lambda e: type(e).__name__)
def test_what_a_client_is_told_is_fixed_per_class_and_carries_the_id(error: Exception) -> None:
    told = public_message(error, "0123456789abcdef")
    assert SECRET_TEXT not in told and told.endswith("(id 0123456789abcdef)")
    assert told == public_message(type(error)("other text"), "0123456789abcdef")
    assert SECRET_TEXT not in problem_for(error).to_json()


def test_a_token_error_becomes_signing_unavailable_at_the_core_boundary() -> None:
    with pytest.raises(SigningUnavailable) as raised, token_errors():
        raise HsmUnavailable("token vpnca: DeviceRemoved")
    assert isinstance(raised.value.__cause__, HsmUnavailable)
    assert est.status_for(raised.value) == 503
