"""IKE identities as a column type: the store takes and gives `tuple[IkeIdentity, ...]`, and keeps
them as the JSON text `[[kind, value], ...]` (so the schema is unchanged and a substring search on
the text still works)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Dialect, Text
from sqlalchemy.types import TypeDecorator, TypeEngine

from vpnca.identities import IkeIdentity

Identities = tuple[IkeIdentity, ...]


def encode_identities(identities: Identities) -> str:
    """The stored text of `identities` (what the hot path's prepared statements bind)."""
    return json.dumps([[i.kind, i.value] for i in identities])


def decode_identities(text: str) -> Identities:
    return tuple(IkeIdentity(kind, value) for kind, value in json.loads(text))


class IdentityList(TypeDecorator[Identities]):
    """A tuple of IkeIdentity, stored as JSON text."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Identities | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if isinstance(value, str):
            raise TypeError("identities are given to the store as IkeIdentity tuples, not as text")
        return encode_identities(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Identities | None:
        return None if value is None else decode_identities(value)

    def coerce_compared_value(self, op: Any, value: Any) -> TypeEngine[Any]:
        """A text pattern (`identities ILIKE '%name%'`) is compared as text."""
        if isinstance(value, str):
            return Text()
        return self


__all__ = ["Identities", "IdentityList", "decode_identities", "encode_identities"]
