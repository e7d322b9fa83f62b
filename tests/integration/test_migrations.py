"""Schema migrations (Alembic) on SQLite and on a real PostgreSQL: a CA made at the baseline revision
keeps every row and its audit chain through `vpnca db upgrade`; a CA from before migrations is adopted;
an outdated schema is refused with the command that fixes it; a migrated database equals the models."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from hsm.softhsm import SoftHsmToken
from tests.conftest import CaHome, make_ca_home
from tests.helpers import free_port, remember_secret, run
from vpnca.audit import verify_chain
from vpnca.authority import IssueRequest
from vpnca.credentials import create_token
from vpnca.errors import SchemaOutdated
from vpnca.identities import IkeIdentity
from vpnca.revocation import Publisher
from vpnca.store import (
    AcmeAccount,
    AcmeAuthorization,
    AcmeChallenge,
    AcmeEabKey,
    AcmeOrder,
    PendingRequest,
    Store,
    migrations,
)
from vpnca.store.acme import AcmeRepository, new_id
from vpnca.store.models import Base

VPNCA = [sys.executable, "-m", "vpnca.cli"]
BASELINE = migrations.BASELINE
HEAD = migrations.head_revision()
ACME_TABLES = ("acme_eab_keys", "acme_accounts", "acme_nonces", "acme_orders", "acme_authorizations",
               "acme_challenges")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """None: the CA's default SQLite database under its home; else a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    base = request.getfixturevalue("postgres_url")
    name = f"mig{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    yield base.rsplit("/", 1)[0] + f"/{name}"


def ca_at_baseline(tmp_path: Path, softhsm: SoftHsmToken, url: str | None,
                   monkeypatch: pytest.MonkeyPatch) -> CaHome:
    """A CA as a vpnca whose schema was revision 0001 created it (`vpnca init` at the baseline)."""
    with monkeypatch.context() as patch:
        patch.setattr(Store, "init_schema", lambda store: store.upgrade_schema(BASELINE))
        ca = make_ca_home(tmp_path / "home", softhsm, database_url=url)
    assert ca.store.schema_revision() == BASELINE
    return ca


def down_to_baseline(ca: CaHome) -> None:
    """Take a CA's database, rows and all, down to the baseline: what a vpnca of revision 0001 would
    have written. Today's code writes only today's columns (a revision may add some, 0003 does), so
    rows are written at head and the later revisions' downgrades take their columns away."""
    with ca.store.write_core() as conn:
        command.downgrade(migrations.config(conn), BASELINE)
    assert ca.store.schema_revision() == BASELINE


def vpnca(ca: CaHome, *args: str, check: bool = True) -> Any:
    return run([*VPNCA, *args], env=ca.env, check=check)


def fill(ca: CaHome) -> dict[str, str]:
    """Rows of every kind, written through the real code paths (and so audited as they are in use)."""
    store, authority = ca.store, ca.authority

    def issue(name: str, profile: str = "device") -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        return authority.issue(IssueRequest(profile=profile, identities=(IkeIdentity.parse(name),),
                                            public_key=key.public_key(), requester="test")).serial

    serials = {"valid": issue("laptop.example.com"), "gateway": issue("vpn.example.com", "gateway"),
               "revoked": issue("stolen.example.com"), "held": issue("held.example.com")}
    publisher = Publisher(authority)
    publisher.regenerate_crl("test")  # a full CRL
    publisher.presign_backlog()  # OCSP answers for every certificate
    authority.revoke(serials["revoked"], "keyCompromise", actor="op",
                     invalidity_date=datetime(2026, 1, 2, tzinfo=UTC))
    publisher.publish_revocation(serials["revoked"], "op")
    authority.revoke(serials["held"], "certificateHold", actor="op")
    publisher.publish_revocation(serials["held"], "op")

    token = create_token(store, identities=(IkeIdentity.parse("phone.example.com"),), profile="device",
                         protocol="est", ttl=timedelta(hours=1), created_by="op")
    remember_secret(token.secret)

    csr_key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "wait.example.com")]))
           .sign(csr_key, hashes.SHA256()))
    now = datetime.now(UTC)
    for request_id, decide in (("a" * 64, True), ("b" * 64, False)):
        store.add_pending_request(PendingRequest(
            request_id=request_id, profile="device", identities=(IkeIdentity("fqdn", "wait.example.com"),),
            requester="token:x", protocol="scep", status="pending", created_at=now,
            csr_der=csr.public_bytes(Encoding.DER), transaction_id=f"tx-{request_id[:4]}"))
        if decide:
            store.decide_pending(request_id, approve=True, actor="op")

    acme = AcmeRepository(store)
    kid = new_id()
    acme.add_eab_key(AcmeEabKey(kid=kid, hmac_key=b"k" * 32,
                                allowed_identities=(IkeIdentity("fqdn", "vpn.example.com"),),
                                profile="gateway", created_by="op", created_at=now,
                                expires_at=now + timedelta(days=7)))
    account = acme.create_account(AcmeAccount(
        id=new_id(), key_thumbprint=new_id(), jwk='{"crv":"P-256","kty":"EC","x":"x","y":"y"}',
        status="valid", contact='["mailto:ops@example.com"]', eab_kid=kid,
        allowed_identities=(IkeIdentity("fqdn", "vpn.example.com"),), profile="gateway", created_at=now))
    authz = AcmeAuthorization(id=new_id(), account_id=account.id, identifier_type="dns",
                              identifier_value="vpn.example.com", status="pending",
                              expires_at=now + timedelta(days=1))
    challenge = AcmeChallenge(id=new_id(), authorization_id=authz.id, type="http-01", token=new_id(),
                              status="pending")
    order = AcmeOrder(id=new_id(), account_id=account.id, status="pending",
                      identifiers='[{"type":"dns","value":"vpn.example.com"}]',
                      authorizations=json.dumps([authz.id]), expires_at=now + timedelta(days=1),
                      created_at=now, certificate_serial=serials["gateway"])
    acme.add_order(order, [authz], [challenge])
    assert acme.start_challenge(challenge.id, authz.id, now)
    acme.finish_challenge(challenge.id, error=None, valid_until=now + timedelta(days=7))
    acme.new_nonce(timedelta(hours=1))

    store.record_job("crl", ok=True, message="CRL 3 published", next_attempt=None)
    store.record_job("gateway", ok=False, message="VICI socket missing",
                     next_attempt=now + timedelta(minutes=5))
    store.audit("op", "note", {"text": "before the upgrade"})
    return serials


def columns_of(store: Store) -> dict[str, list[str]]:
    """The columns each vpnca table has in the database (at its revision, not the models')."""
    inspector = sa.inspect(store.engine)
    return {table.name: [c["name"] for c in inspector.get_columns(table.name)]
            for table in Base.metadata.sorted_tables}


def snapshot(store: Store, columns: dict[str, list[str]] | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every vpnca table, in primary-key order: the columns the database has, or `columns`
    (those of an earlier revision)."""
    columns = columns or columns_of(store)
    rows = {}
    with store.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            query = sa.select(*(table.c[name] for name in columns[table.name])).order_by(*table.primary_key)
            rows[table.name] = [tuple(r) for r in conn.execute(query)]
    return rows


def not_null_in_added_columns(store: Store, earlier: dict[str, list[str]]) -> dict[str, int]:
    """{table.column: rows with a value} for the columns added since `earlier`."""
    found = {}
    with store.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for column in table.columns:
                if column.name not in earlier[table.name]:
                    count = conn.scalar(sa.select(sa.func.count()).select_from(table)
                                        .where(column.is_not(None)))
                    if count:
                        found[f"{table.name}.{column.name}"] = int(count)
    return found


def differences(store: Store) -> list[Any]:
    with store.engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def refused(result: Any, revision: str) -> None:
    """Exit 1, one line on stderr naming the revisions and the command to run, no traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"database schema is at revision {revision}, this vpnca needs {HEAD}" in result.stderr
    assert "run `vpnca db upgrade`" in result.stderr


def test_baseline_ca_keeps_every_row_and_its_audit_chain_through_db_upgrade(
        database_url: str | None, tmp_path: Path, softhsm: SoftHsmToken,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ca = make_ca_home(tmp_path / "home", softhsm, database_url=database_url)
    serials = fill(ca)
    down_to_baseline(ca)
    before = snapshot(ca.store)
    baseline_columns = columns_of(ca.store)
    empty = [name for name, rows in before.items() if not rows]
    assert not empty, f"no rows of {empty}"
    assert verify_chain(ca.store.audit_entries()).ok

    # an outdated schema is refused by every command that opens the store, the service and init
    with pytest.raises(SchemaOutdated, match="vpnca db upgrade"):
        ca.store.require_current_schema()
    refused(vpnca(ca, "list", check=False), BASELINE)
    refused(vpnca(ca, "serve", "--https-port", str(free_port()), "--http-port", str(free_port()),
                  check=False), BASELINE)
    refused(vpnca(ca, "init", check=False), BASELINE)
    current = vpnca(ca, "db", "current", "--json", check=False)
    assert current.returncode == 1
    assert json.loads(current.stdout) | {"problem": None} == {"current": BASELINE, "head": HEAD,
                                                              "up_to_date": False, "problem": None}
    assert snapshot(ca.store) == before  # refusing wrote nothing

    upgraded = vpnca(ca, "db", "upgrade")
    assert f"{BASELINE} -> {HEAD}" in upgraded.stdout
    assert ca.store.schema_revision() == HEAD
    after = snapshot(ca.store, baseline_columns)
    assert not_null_in_added_columns(ca.store, baseline_columns) == {}  # rows from before have none
    audit_before, audit_after = before.pop("audit_log"), after.pop("audit_log")
    assert after == before
    assert audit_after[:len(audit_before)] == audit_before
    assert [row[3] for row in audit_after[len(audit_before):]] == ["schema-upgrade"]
    assert differences(ca.store) == []

    verified = json.loads(vpnca(ca, "audit", "verify", "--json").stdout)
    # and the `config` entry this CLI run added
    assert verified["ok"] and verified["entries"] > len(audit_after)
    assert verify_chain(ca.store.audit_entries()).ok
    rows = [json.loads(line) for line in vpnca(ca, "list", "--json").stdout.splitlines()]  # JSON Lines
    listed = {r["serial"]: r["status"] for r in rows}
    assert listed == {serials["valid"]: "valid", serials["gateway"]: "valid", serials["revoked"]: "revoked",
                      serials["held"]: "on-hold"}
    assert vpnca(ca, "db", "current").stdout.splitlines()[-1] == "up to date"
    assert "up to date" in vpnca(ca, "db", "upgrade").stdout  # a second upgrade has nothing to do
    expiring = [json.loads(line) for line in
                vpnca(ca, "report", "expiring", "--within", "14d", "--json").stdout.splitlines()]
    # the gateway's runs 30 days, held is revoked
    assert [r["serial"] for r in expiring] == [serials["valid"]]
    # the CA works on at head
    vpnca(ca, "revoke", serials["valid"], "--reason", "superseded")
    assert verify_chain(ca.store.audit_entries()).ok


@pytest.mark.parametrize("made_before", ["baseline", "acme"])
def test_ca_from_before_migrations_is_adopted_at_the_baseline_and_upgraded(
        made_before: str, database_url: str | None, tmp_path: Path, softhsm: SoftHsmToken,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables but no alembic_version: a CA deployed before migrations existed ("acme": one deployed
    before the ACME tables, which the old create_all would have added on the next start)."""
    ca = make_ca_home(tmp_path / "home", softhsm, database_url=database_url)
    serial = ca.authority.issue(IssueRequest(
        profile="device", identities=(IkeIdentity.parse("old.example.com"),),
        public_key=ec.generate_private_key(ec.SECP384R1()).public_key(), requester="test")).serial
    down_to_baseline(ca)
    with ca.store.write_core() as conn:
        conn.execute(sa.text("DROP TABLE alembic_version"))
        if made_before == "acme":
            for name in ACME_TABLES:
                conn.execute(sa.text(f"DROP TABLE {name}"))
    kept = ("certificates", "ca_certificates", "audit_log")
    inspector = sa.inspect(ca.store.engine)
    baseline_columns = {name: [c["name"] for c in inspector.get_columns(name)] for name in kept}
    before = snapshot_of(ca.store, kept, baseline_columns)
    assert ca.store.schema_revision() is None and ca.store.schema_state().pre_migrations

    refused(vpnca(ca, "status", check=False), "none (created before migrations)")
    upgraded = vpnca(ca, "db", "upgrade")
    assert f"none (created before migrations) -> {HEAD}" in upgraded.stdout
    assert ca.store.schema_revision() == HEAD
    assert differences(ca.store) == []
    after = snapshot_of(ca.store, kept, baseline_columns)
    assert after["certificates"] == before["certificates"]
    assert after["ca_certificates"] == before["ca_certificates"]
    assert after["audit_log"][:-1] == before["audit_log"]
    assert json.loads(vpnca(ca, "audit", "verify", "--json").stdout)["ok"]
    rows = [json.loads(line) for line in vpnca(ca, "list", "--json").stdout.splitlines()]  # JSON Lines
    assert [r["serial"] for r in rows] == [serial]


def snapshot_of(store: Store, tables: tuple[str, ...],
                columns: dict[str, list[str]] | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of `tables`: every column the database has, or `columns` (those of an earlier revision)."""
    if columns is None:
        inspector = sa.inspect(store.engine)
        columns = {name: [c["name"] for c in inspector.get_columns(name)] for name in tables}
    with store.engine.connect() as conn:
        return {name: [tuple(r) for r in conn.execute(sa.text(
            f"SELECT {', '.join(columns[name])} FROM {name} ORDER BY 1"))] for name in tables}


def test_adopting_refuses_a_table_without_the_baseline_columns(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'old.db'}")
    with store.write_core() as conn:
        conn.execute(sa.text("CREATE TABLE certificates "
                             "(serial VARCHAR(40) PRIMARY KEY, issuer VARCHAR(128))"))
    with pytest.raises(SchemaOutdated, match="table certificates lacks columns profile, subject"):
        store.upgrade_schema()
    assert store.schema_revision() is None  # all or nothing: the failed upgrade left no trace
    assert sa.inspect(store.engine).get_table_names() == ["certificates"]
    store.dispose()


def test_new_database_is_created_at_head_and_equals_the_models(database_url: str | None,
                                                               tmp_path: Path) -> None:
    store = Store(database_url or f"sqlite:///{tmp_path / 'new.db'}")
    assert store.schema_state().empty
    with pytest.raises(SchemaOutdated, match="no vpnca schema: run `vpnca init`"):
        store.require_current_schema()
    store.init_schema()
    assert store.schema_revision() == HEAD
    store.require_current_schema()
    assert differences(store) == []
    # every revision goes down and up again
    with store.write_core() as conn:
        command.downgrade(migrations.config(conn), BASELINE)
    assert store.schema_revision() == BASELINE
    assert store.upgrade_schema() == (BASELINE, HEAD)
    assert differences(store) == []
    store.dispose()


def test_a_schema_from_a_newer_vpnca_is_refused(ca_home: CaHome) -> None:
    with ca_home.store.write_core() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaOutdated, match=r"revision 9999, which this vpnca .* does not know"):
        ca_home.store.upgrade_schema()
    result = vpnca(ca_home, "list", check=False)
    assert result.returncode == 1 and "a newer vpnca upgraded it" in result.stderr


def test_a_ca_made_by_init_is_at_head(ca_home: CaHome) -> None:
    assert ca_home.store.schema_revision() == HEAD
    out = vpnca(ca_home, "db", "current").stdout
    assert out.splitlines() == [f"current   {HEAD}", f"head      {HEAD}", "up to date"]
