"""Prepared statements for the issuance hot path: a Core statement compiled once for the engine's
dialect and executed straight on the DBAPI cursor, with the column types' bind processors applied.

SQLAlchemy's per-execution machinery (cache key, execution context, result wrapping) costs ~0.13 ms
a statement here against ~0.01 ms for the statement itself; an issuance runs about ten of them.
The SQL, the parameter order and the type conversions are still SQLAlchemy's, so the two paths
store identical values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.sql.expression import Executable


class Prepared:
    """One compiled statement; `run(cursor, **params)` executes it and returns the cursor."""

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        self.sql: str = compiled.string
        self._order: list[str] | None = list(compiled.positiontup) if compiled.positional else None
        self._processors: dict[str, Callable[[Any], Any]] = {}
        # values the statement carries itself (`.values(status="valid")`), unless a caller gives them
        self._literals = {name: bind.effective_value for name, bind in compiled.binds.items()
                          if bind.value is not None}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._processors[name] = processor

    def _convert(self, params: dict[str, Any]) -> dict[str, Any]:
        return {name: self._processors[name](value) if name in self._processors else value
                for name, value in {**self._literals, **params}.items()}

    def run(self, cursor: Any, **params: Any) -> Any:
        values = self._convert(params)
        cursor.execute(self.sql,
                       [values[name] for name in self._order] if self._order is not None else values)
        return cursor


__all__ = ["Prepared"]
