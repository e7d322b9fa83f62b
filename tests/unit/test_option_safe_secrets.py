"""Credentials handed to operators never begin with '-': ACME clients take them as `--eab-kid KID`
`--eab-hmac-key KEY`, curl as `-u ID:SECRET`, and an option parser reads a leading '-' as an option."""

from __future__ import annotations

import base64
import itertools
import secrets
from datetime import timedelta
from typing import Any, cast

import pytest

from vpnca.credentials import create_token, option_safe_key, option_safe_token
from vpnca.identities import IkeIdentity
from vpnca.store import Store

MANY = 5000  # a base64url text begins with '-' once in 64: without the guard, ~78 of these would


class _TokenSink:
    """Stands in for the Store: create_token only adds the token row."""

    def __init__(self) -> None:
        self.rows: list[Any] = []

    def add_enrollment_token(self, token: Any) -> None:
        self.rows.append(token)


def test_generated_eab_hmac_keys_and_kids_never_begin_with_a_dash() -> None:
    for _ in range(MANY):
        key, text = option_safe_key(32)
        assert not text.startswith("-")
        assert base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)) == key and len(key) == 32
        assert not option_safe_token(12).startswith("-")


def test_enrollment_token_ids_and_secrets_never_begin_with_a_dash() -> None:
    sink = _TokenSink()
    for _ in range(MANY):
        token = create_token(cast(Store, sink), identities=(IkeIdentity.parse("vpn.example.com"),),
                             profile="device", protocol="est", ttl=timedelta(hours=1), created_by="test")
        assert not token.token_id.startswith("-") and not token.secret.startswith("-")
    assert len(sink.rows) == MANY


def test_a_random_draw_that_would_begin_with_a_dash_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = itertools.chain([b"\xf8" + b"\x00" * 31], itertools.repeat(b"\x01" * 32))  # 0xf8...: "-A..."
    assert base64.urlsafe_b64encode(b"\xf8" + b"\x00" * 31).startswith(b"-")
    monkeypatch.setattr(secrets, "token_bytes", lambda n: next(draws)[:n])
    key, text = option_safe_key(32)
    assert key == b"\x01" * 32 and text.startswith("AQEB")
