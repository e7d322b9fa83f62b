"""Alembic environment of vpnca: run online, on the connection vpnca hands over (see `migrations.upgrade`).

Without one (a developer running Alembic by hand), it opens `sqlalchemy.url` with vpnca's own engine
settings (SQLite in WAL mode, PostgreSQL through psycopg).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from vpnca.store.tables import metadata


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():  # a no-op inside the transaction vpnca opened
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit("vpnca migrations run online only: use `vpnca db upgrade`")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    from vpnca.store.database import make_engine

    engine = make_engine(context.config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.begin() as conn:
            run(conn)
    finally:
        engine.dispose()


main()
