"""Fixtures: a real SoftHSM2 token, CA homes on it, and a real PostgreSQL cluster."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hsm.softhsm import SoftHsmToken, init_softhsm_token
from tests.helpers import free_port, require_tool, stop_process
from tests.postgres import PostgresCluster
from vpnca import ceremony
from vpnca.authority import Authority
from vpnca.config import Settings, load_settings, render_config
from vpnca.store import Store

TOKEN_LABEL = "vpnca-test"
_ca_names = itertools.count(1)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsmToken:
    """One SoftHSM2 token for the whole run (PKCS#11 is initialised once per process)."""
    require_tool("softhsm2-util")
    token = init_softhsm_token(tmp_path_factory.mktemp("softhsm"), TOKEN_LABEL)
    os.environ["SOFTHSM2_CONF"] = str(token.conf)
    return token


@dataclass
class CaHome:
    settings: Settings
    store: Store
    hierarchy: ceremony.Hierarchy
    authority: Authority
    env: dict[str, str]

    @property
    def home(self) -> Path:
        return self.settings.home


def make_ca_home(home: Path, softhsm: SoftHsmToken, database_url: str | None = None,
                 **config: object) -> CaHome:
    """A fresh VPNCA_HOME with its config, a CA initialised on the shared test token."""
    home.mkdir(parents=True, exist_ok=True)
    name = f"ca{next(_ca_names)}-{os.getpid()}"
    text = render_config(
        domains=["example.com", "example.net"], ip_ranges=["10.0.0.0/8", "192.0.2.0/24"],
        token_label=softhsm.label, softhsm_conf=str(softhsm.conf), pin_file=str(softhsm.pin_file),
        ca_name=name, **config,  # type: ignore[arg-type]
    )
    if database_url:
        text += f'\n[database]\nurl = "{database_url}"\n'
    (home / "vpnca.toml").write_text(text)
    settings = load_settings(home)
    store = Store(settings.database_url)
    hierarchy = ceremony.initialise(settings, store, actor="test")
    env = {**os.environ, "VPNCA_HOME": str(home), "SOFTHSM2_CONF": str(softhsm.conf)}
    env.pop("VPNCA_DATABASE_URL", None)
    return CaHome(settings, store, hierarchy, Authority.open(settings, store), env)


@pytest.fixture
def ca_home(tmp_path: Path, softhsm: SoftHsmToken) -> Iterator[CaHome]:
    home = make_ca_home(tmp_path / "home", softhsm)
    yield home
    home.store.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL cluster from the Debian package, shared by the session's tests."""
    cluster = PostgresCluster()
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.remove()


@pytest.fixture(params=["sqlite", "postgres"])
def any_ca_home(request: pytest.FixtureRequest, tmp_path: Path, softhsm: SoftHsmToken) -> Iterator[CaHome]:
    """The same CA on SQLite and on a real PostgreSQL (a fresh database each time)."""
    url = None
    if request.param == "postgres":
        base = request.getfixturevalue("postgres_url")
        dbname = f"t{next(_ca_names)}"
        import sqlalchemy

        admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {dbname}")
        admin.dispose()
        url = base.rsplit("/", 1)[0] + f"/{dbname}"
    home = make_ca_home(tmp_path / "home", softhsm, database_url=url)
    yield home
    home.store.dispose()


@dataclass
class RunningServer:
    ca: CaHome
    https_port: int
    http_port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def est(self) -> str:
        return f"https://localhost:{self.https_port}/.well-known/est"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log.read_text()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"server did not listen on {port}:\n{log.read_text()}")


def start_server(ca: CaHome, *extra: str) -> RunningServer:
    """`vpnca serve` as a real process on free ports."""
    import sys

    https_port, http_port = free_port(), free_port()
    log = ca.home / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "vpnca.cli", "-v", "serve", "--https-port", str(https_port),
         "--http-port", str(http_port), *extra],
        env=ca.env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    wait_for_port(https_port, process, log)
    wait_for_port(http_port, process, log)
    return RunningServer(ca, https_port, http_port, process, log)


def stop_server(server: RunningServer) -> None:
    stop_process(server.process)


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory, softhsm: SoftHsmToken) -> Iterator[None]:
    """After the whole run: no PIN, token secret or private key in any log any process wrote."""
    yield
    from tests.helpers import SECRETS

    pin = softhsm.pin_file.read_text().strip()
    needles = {"the token PIN": pin, "a private key": "PRIVATE KEY"}
    needles.update({f"token secret {s[:4]}…": s for s in SECRETS})
    for home_pin in tmp_path_factory.getbasetemp().rglob("softhsm/pin"):
        needles[f"PIN of {home_pin.parent.parent.name}"] = home_pin.read_text().strip()
    leaks = []
    for path in tmp_path_factory.getbasetemp().rglob("*"):
        if path.is_file() and (path.suffix in (".log", ".jsonl") or path.name.endswith(".log")):
            text = path.read_text(errors="replace")
            leaks += [f"{what} in {path}" for what, needle in needles.items() if needle and needle in text]
    assert not leaks, "secrets in logs:\n" + "\n".join(leaks)
