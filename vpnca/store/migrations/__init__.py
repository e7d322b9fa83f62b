"""Schema migrations with Alembic, configured from code so that they run from an installed package.

The revisions are in `versions/`, written by hand: each states its own operations and never calls the
models' `create_all`, since the models move on after it. To change the schema, change models.py and add
`versions/rNNNN_what.py` (its `down_revision` the current head) making the same change; the migration
tests check that a migrated database and the models agree. Alembic can draft one against a database at
head: `command.revision(config(url=URL), message="what", autogenerate=True, rev_id="NNNN")`.

`0001` is the schema vpnca had before migrations existed. A database created then (vpnca's tables but no
`alembic_version`) is adopted: the baseline adds the tables it lacks, records itself, and the later
revisions run.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from vpnca.errors import SchemaOutdated

# Alembic is imported where a migration runs: checking that a database is current needs none of it
if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

BASELINE = "0001"
MIGRATION_LOCK_KEY = 0x7670_6D67  # "vpmg": the advisory lock that serialises upgrades on PostgreSQL
VPNCA_TABLES = ("certificates", "ca_certificates", "audit_log")  # in every vpnca database since the first
UPGRADE_HINT = "run `vpnca db upgrade`"


def config(connection: sa.Connection | None = None, *, url: str | None = None) -> Config:
    """An Alembic configuration without alembic.ini: the scripts beside this file."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent).replace("%", "%%"))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def script_directory() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config())


def head_revision() -> str:
    """The revision this vpnca needs."""
    head = script_directory().get_current_head()
    assert head is not None, "no migration scripts"
    return head


@functools.cache
def head_without_alembic() -> str:
    """`head_revision()` read from the scripts' `revision` and `down_revision` lines alone (a test
    checks they agree): the revision no other revision follows."""
    revisions, parents = set(), set()
    for script in (Path(__file__).resolve().parent / "versions").glob("r*.py"):
        text = script.read_text()
        revisions |= set(re.findall(r'^revision\b[^=]*= "([^"]+)"', text, re.MULTILINE))
        parents |= set(re.findall(r'^down_revision\b[^=]*= "([^"]+)"', text, re.MULTILINE))
    heads = revisions - parents
    assert len(heads) == 1, f"migration heads: {sorted(heads)}"
    return str(heads.pop())


def is_current(connection: sa.Connection) -> bool:
    """The database records this vpnca's head revision (a quick check; `schema_state` says why not)."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return False
    rows = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    return rows == [head_without_alembic()]


def known_revisions() -> set[str]:
    return {script.revision for script in script_directory().walk_revisions()}


@dataclass(frozen=True)
class SchemaState:
    current: str | None  # None: no alembic_version (an empty database, or one from before migrations)
    head: str
    has_tables: bool  # vpnca's tables are there

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    @property
    def empty(self) -> bool:
        return self.current is None and not self.has_tables

    @property
    def pre_migrations(self) -> bool:
        """Created by a vpnca from before migrations: to be adopted at the baseline."""
        return self.current is None and self.has_tables

    @property
    def known(self) -> bool:
        """The database's revision is one this vpnca has (not one made by a newer vpnca)."""
        return self.current is None or self.current in known_revisions()

    def describe(self) -> str:
        if self.current is not None:
            return self.current
        return "none (created before migrations)" if self.has_tables else "none (empty database)"

    def problem(self) -> SchemaOutdated | None:
        """Why this vpnca cannot work on the database as it is, or None."""
        if self.up_to_date:
            return None
        if self.empty:
            return SchemaOutdated("the database has no vpnca schema: run `vpnca init` for a new CA "
                                  "(or `vpnca db upgrade` to create the tables)", required=self.head)
        if not self.known:
            return SchemaOutdated(f"database schema is at revision {self.current}, which this vpnca "
                                  f"(head {self.head}) does not know: a newer vpnca upgraded it; run that "
                                  "version", current=self.current, required=self.head)
        return SchemaOutdated(f"database schema is at revision {self.describe()}, "
                              f"this vpnca needs {self.head}: {UPGRADE_HINT}",
                              current=self.current, required=self.head)


def schema_state(connection: sa.Connection) -> SchemaState:
    from alembic.runtime.migration import MigrationContext

    current = MigrationContext.configure(connection).get_current_revision()
    inspector = sa.inspect(connection)
    has_tables = any(inspector.has_table(name) for name in VPNCA_TABLES)
    return SchemaState(current, head_revision(), has_tables)


def upgrade(connection: sa.Connection, target: str = "head") -> tuple[SchemaState, str]:
    """Upgrade the database to `target` inside the caller's transaction (all or nothing, on SQLite
    and PostgreSQL alike); a database from before migrations is adopted at the baseline first.
    Returns the state before and the revision after."""
    # two upgrades at once: the second waits, then has nothing to do
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    before = schema_state(connection)
    if not before.known:
        problem = before.problem()
        assert problem is not None
        raise problem
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    cfg = config(connection)
    cfg.attributes["adopt"] = before.pre_migrations
    command.upgrade(cfg, target)
    after = MigrationContext.configure(connection).get_current_revision()
    assert after is not None
    return before, after
