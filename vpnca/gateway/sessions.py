"""The gateway's live tunnels: which certificate authenticated each IKE SA, connection records from
charon's VICI events, and cutting off the SAs of a revoked certificate.

charon 5.9's VICI does not say which certificate authenticated an IKE SA (`list-sas` carries only the
peer's identity), but charon caches the peer certificates it verified and `list-certs` lists them. So
when an IKE SA comes up, the watcher (a thread of the service) notes the peer certificate of that
identity that is new in charon's cache, and keeps the mapping in `$VPNCA_HOME/gateway/sessions.json`,
where `vpnca revoke` (another process) reads it. An SA the mapping does not know is attributed from
the cache alone (a certificate of its identity issued before it came up); when that leaves a choice,
a revocation cuts it off: only an SA positively attributed to another certificate stays up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import vici
from cryptography import x509

from vpnca import metrics
from vpnca.config import GatewaySettings, Settings
from vpnca.events import emit
from vpnca.gateway import fleet
from vpnca.gateway.vici_client import GatewayError, _plain
from vpnca.identities import identities_of_certificate

log = logging.getLogger("vpnca.gateway")
EVENTS = ["ike-updown", "child-updown", "ike-rekey", "child-rekey"]


def gateway_name(settings: Settings, gw: GatewaySettings | None = None) -> str:
    return fleet.name_of(settings, gw or settings.gateway)


def _map_path(settings: Settings, gw: GatewaySettings | None = None) -> Path:
    return fleet.directory(settings, gw or settings.gateway) / "sessions.json"


def sa_key(sa: dict[str, Any]) -> str:
    """An IKE SA's key in the mapping: charon's unique id with the initiator's SPI (unique ids start
    again at 1 when charon restarts)."""
    return f"{sa.get('uniqueid', '')}/{sa.get('initiator-spi', '')}"


class SessionMap:
    """Serial per IKE SA, and the serials already seen in charon's certificate cache."""

    def __init__(self, settings: Settings, gw: GatewaySettings | None = None) -> None:
        self.path = _map_path(settings, gw)
        self.sas: dict[str, dict[str, Any]] = {}
        self.cached: set[str] = set()
        try:
            data = json.loads(self.path.read_text())
            self.sas = dict(data.get("sas", {}))
            self.cached = set(data.get("cached", []))
        except (OSError, ValueError):
            pass

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"sas": self.sas, "cached": sorted(self.cached)}, indent=1))
        os.replace(tmp, self.path)


# ---- reading charon -------------------------------------------------------------------------------

def _normalise_dn(text: str) -> frozenset[str]:
    return frozenset(part.strip().lower().replace(" ", "") for part in text.split(",") if part.strip())


def identity_matches(remote_id: str, cert: x509.Certificate) -> bool:
    """Whether an IKE identity as charon prints it is one the certificate carries."""
    remote = remote_id.strip()
    if remote.lower() in {str(i).lower() for i in identities_of_certificate(cert)}:
        return True
    return "=" in remote and _normalise_dn(remote) == _normalise_dn(cert.subject.rfc4514_string())


def peer_certificates(session: vici.Session) -> dict[str, x509.Certificate]:
    """End-entity certificates in charon's cache that are not charon's own (no private key)."""
    found = {}
    for item in session.list_certs({"type": "X509", "flag": "NONE"}):
        if item.get("has_privkey", b"no") == b"yes":
            continue
        cert = x509.load_der_x509_certificate(bytes(item["data"]))
        found[format(cert.serial_number, "x")] = cert
    return found


def ike_sas(session: vici.Session) -> list[dict[str, Any]]:
    """`list-sas`, each IKE SA as a plain dict with its connection name under `name`."""
    return [{"name": name, **_plain(sa)} for item in session.list_sas() for name, sa in item.items()]


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _proposal(sa: dict[str, Any]) -> dict[str, Any]:
    keys = ("encr-alg", "encr-keysize", "integ-alg", "integ-keysize", "prf-alg", "dh-group")
    return {k.replace("-", "_"): sa[k] for k in keys if k in sa}


def child_record(child: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "child": child.get("name"), "child_id": child.get("uniqueid"), "state": child.get("state"),
        "mode": child.get("mode"), "protocol": child.get("protocol"), "encap": child.get("encap") == "yes",
        "esp": _proposal(child), "local_ts": child.get("local-ts", []),
        "remote_ts": child.get("remote-ts", []),
    }
    for key in ("bytes-in", "packets-in", "bytes-out", "packets-out", "rekey-time", "life-time",
                "install-time"):
        if key in child:
            record[key.replace("-", "_")] = _int(child[key])
    return record


def ike_record(sa: dict[str, Any]) -> dict[str, Any]:
    """What a connection record says about one IKE SA (and its CHILD SAs)."""
    children = sa.get("child-sas") or {}
    return {
        "connection": sa.get("name"), "ike_id": sa.get("uniqueid"), "state": sa.get("state"),
        "identity": sa.get("remote-id"), "local_id": sa.get("local-id"),
        "local_address": sa.get("local-host"), "local_port": _int(sa.get("local-port")),
        "remote_address": sa.get("remote-host"), "remote_port": _int(sa.get("remote-port")),
        "nat": {"local": sa.get("nat-local") == "yes", "remote": sa.get("nat-remote") == "yes",
                "any": sa.get("nat-any") == "yes"},
        "initiator_spi": sa.get("initiator-spi"), "responder_spi": sa.get("responder-spi"),
        "ike": _proposal(sa), "established_seconds": _int(sa.get("established")),
        "rekey_time": _int(sa.get("rekey-time")), "reauth_time": _int(sa.get("reauth-time")),
        "children": [child_record(c) for c in children.values()] if isinstance(children, dict) else [],
    }


# ---- which certificate authenticated an SA --------------------------------------------------------

def _established_at(sa: dict[str, Any], now: datetime) -> datetime:
    seconds = _int(sa.get("established"))
    return now - timedelta(seconds=seconds or 0)


def candidates(sa: dict[str, Any], cache: dict[str, x509.Certificate], now: datetime) -> list[str]:
    """Serials in charon's cache that could have authenticated the SA: its identity, valid from before
    it came up (a second of slack: `established` is in whole seconds)."""
    identity = str(sa.get("remote-id", ""))
    since = _established_at(sa, now) + timedelta(seconds=2)
    found = [(c.not_valid_before_utc, s) for s, c in cache.items()
             if identity_matches(identity, c) and c.not_valid_before_utc <= since]
    return [s for _, s in sorted(found, reverse=True)]  # newest first


def attribute_new_sa(sa: dict[str, Any], smap: SessionMap, cache: dict[str, x509.Certificate],
                     now: datetime, *, fresh: bool = True) -> dict[str, Any]:
    """When an IKE SA comes up (`fresh`): the certificate of its identity that is new in charon's
    cache; else the only one there. Otherwise the serial stays unknown (`candidates` lists the choice,
    `likely` the one the same identity last used): a revocation of any candidate cuts it off."""
    found = candidates(sa, cache, now)
    new = [s for s in found if s not in smap.cached]
    identity = sa.get("remote-id")
    likely = None
    if fresh and len(new) == 1:
        serial, how = new[0], "received"
    elif len(found) == 1:
        serial, how = found[0], "only-candidate"
    else:
        serial, how = None, "ambiguous" if found else "unknown"
        previous = sorted((v for v in smap.sas.values() if v.get("identity") == identity
                           and v.get("serial") in found), key=lambda v: str(v.get("since")))
        likely = previous[-1]["serial"] if previous else None
    return {"serial": serial, "identity": identity, "how": how, "candidates": found, "likely": likely,
            "since": _established_at(sa, now).isoformat(timespec="seconds")}


def attribution(sa: dict[str, Any], smap: SessionMap, cache: dict[str, x509.Certificate],
                now: datetime) -> dict[str, Any]:
    """The recorded attribution, or one from charon's cache alone (`candidates` lists the choice)."""
    known = smap.sas.get(sa_key(sa))
    if known is not None:
        return known
    found = candidates(sa, cache, now)
    return {"serial": found[0] if len(found) == 1 else None, "identity": sa.get("remote-id"),
            "how": "cache" if len(found) == 1 else "ambiguous", "candidates": found}


# ---- cutting off ----------------------------------------------------------------------------------

def terminate(session: vici.Session, ike_id: str) -> None:
    for _ in session.terminate({"ike-id": ike_id, "force": "yes", "timeout": "500", "loglevel": "-1"}):
        pass


def cut_off(settings: Settings, store: Any, serial: str, *, actor: str,
            uri: str | None = None, gw: GatewaySettings | None = None) -> list[dict[str, Any]]:
    """Terminate every IKE SA (with its CHILD SAs) the certificate `serial` authenticated, audited as
    `gateway.terminated`. An SA of the same identity recorded as authenticated by another certificate
    stays up. Then charon's cached OCSP answers and CRLs are dropped, so that a new attempt with the
    certificate is checked afresh (and refused)."""
    record = store.get_certificate(serial)
    if record is None or record.der is None:
        return []
    cert = x509.load_der_x509_certificate(record.der)
    gw = gw or settings.gateway
    gateway = gateway_name(settings, gw)
    smap = SessionMap(settings, gw)
    now = datetime.now(UTC)
    done: list[dict[str, Any]] = []
    with fleet.session(settings, gw, uri) as session:
        cache = peer_certificates(session)
        for sa in ike_sas(session):
            if not identity_matches(str(sa.get("remote-id", "")), cert):
                continue
            known = attribution(sa, smap, cache, now)
            if known.get("serial") not in (serial, None):
                continue  # authenticated with another certificate of the same identity
            try:
                terminate(session, str(sa["uniqueid"]))
            except vici.exception.CommandException as exc:
                log.warning("gateway %s: terminating IKE SA %s failed: %s", gateway, sa["uniqueid"], exc)
                continue
            done.append({"ike_id": sa["uniqueid"], "child_ids": [c.get("uniqueid") for c in
                                                                 (sa.get("child-sas") or {}).values()],
                         "remote_address": sa.get("remote-host"), "attribution": known.get("how")})
        for kind in ("ocsp_response", "x509_crl"):
            with contextlib.suppress(vici.exception.CommandException):
                session.flush_certs({"type": kind})
    if done:
        identity = str(cert.subject.rfc4514_string())
        ids = [str(i) for i in identities_of_certificate(cert)]
        details: dict[str, Any] = {"serial": serial, "identity": ids[0] if ids else identity,
                                   "gateway": gateway, "sas": done}
        store.audit(actor, "gateway.terminated", details)
        emit("gateway.terminated", requester=actor, **details)
        metrics.gateway_terminated(gateway, len(done))
    return done


def cut_off_quietly(settings: Settings, store: Any, serial: str, *, actor: str) -> None:
    """The revocation hook: cut off at every managed gateway; never fails the revocation itself."""
    gateways = fleet.managed(settings)
    if not gateways:
        return
    record = store.get_certificate(serial)
    if record is None or record.status != "revoked":
        return  # a hold released: nothing comes back
    for gw in gateways:
        try:
            cut_off(settings, store, serial, actor=actor, gw=gw)
        except (GatewayError, OSError, vici.exception.SessionException) as exc:
            log.warning("gateway %s: cut-off for %s failed (the watcher retries): %s",
                        gateway_name(settings, gw), serial, exc)


# ---- live tunnels ----------------------------------------------------------------------------------

def live_sessions(settings: Settings, *, uri: str | None = None,
                  gw: GatewaySettings | None = None) -> list[dict[str, Any]]:
    """A gateway's IKE SAs now (`vpnca sessions`), each with its certificate where known."""
    gw = gw or settings.gateway
    smap = SessionMap(settings, gw)
    now = datetime.now(UTC)
    with fleet.session(settings, gw, uri) as session:
        cache = peer_certificates(session)
        sas = ike_sas(session)
    out = []
    for sa in sas:
        known = attribution(sa, smap, cache, now)
        out.append({"gateway": gateway_name(settings, gw), **ike_record(sa), "serial": known.get("serial"),
                    "serial_attribution": known.get("how")})
    return out


def tunnels_up(settings: Settings, gw: GatewaySettings) -> int:
    with fleet.session(settings, gw) as session:
        return sum(1 for sa in ike_sas(session) if sa.get("state") == "ESTABLISHED")


# ---- the watcher ------------------------------------------------------------------------------------

class Watcher:
    """Listens to charon's VICI events in a thread: connection records, /metrics, the serial of each IKE
    SA; reconnects when charon restarts and reconciles from `list-sas` (VICI does not replay events
    missed meanwhile); every few seconds cuts off SAs whose certificate has been revoked since."""

    def __init__(self, settings: Settings, store: Any, *, sweep_every: float = 5.0,
                 gw: GatewaySettings | None = None) -> None:
        self.settings = settings
        self.store = store
        self.gw = gw or settings.gateway
        self.gateway = gateway_name(settings, self.gw)
        self.sweep_every = sweep_every
        self.stop = threading.Event()
        self.smap = SessionMap(settings, self.gw)
        self.recent: dict[str, dict[str, Any]] = {}  # IKE SAs just gone, for their CHILD SAs' events
        self.thread = threading.Thread(target=self.run, name="vpnca-gateway-watcher", daemon=True)

    def start(self) -> Watcher:
        self.thread.start()
        return self

    def run(self) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                with fleet.session(self.settings, self.gw) as events:
                    self.reconcile()
                    backoff = 0.5
                    self.listen(events)
            except (GatewayError, OSError, vici.exception.SessionException,
                    vici.exception.CommandException) as exc:
                log.debug("gateway %s: VICI watcher: %s", self.gateway, exc)
            except Exception:  # keep watching whatever happens; log it
                log.exception("gateway %s: VICI watcher failed", self.gateway)
            self.stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def listen(self, events: vici.Session) -> None:
        last_sweep = time.monotonic()
        for label, message in events.listen(EVENTS, timeout=1.0):
            if self.stop.is_set():
                return
            if label is not None and message is not None:
                self.handle(label.decode() if isinstance(label, bytes) else str(label), _plain(message))
            if time.monotonic() - last_sweep >= self.sweep_every:
                last_sweep = time.monotonic()
                self.sweep()

    def _command(self) -> Any:
        return fleet.session(self.settings, self.gw)

    def reconcile(self) -> None:
        """On (re)connect: record the SAs up now, forget those gone, set the tunnel gauge."""
        now = datetime.now(UTC)
        with self._command() as session:
            cache = peer_certificates(session)
            sas = ike_sas(session)
        live = {sa_key(sa) for sa in sas}
        gone = [k for k in self.smap.sas if k not in live]
        for key in gone:
            del self.smap.sas[key]
        added = 0
        for sa in sas:
            if sa.get("state") == "ESTABLISHED" and sa_key(sa) not in self.smap.sas:
                self.smap.sas[sa_key(sa)] = attribute_new_sa(sa, self.smap, cache, now, fresh=False) | {
                    "reconciled": True}
                added += 1
        self.smap.cached = set(cache)
        self.smap.save()
        up = sum(1 for sa in sas if sa.get("state") == "ESTABLISHED")
        metrics.gateway_tunnels(self.gateway, up)
        emit("gateway.reconciled", gateway=self.gateway, tunnels=up, recorded=added, forgotten=len(gone))
        self.sweep()

    def sweep(self) -> None:
        """Cut off live SAs whose recorded certificate is revoked (a revocation `vpnca revoke` could not
        push to the gateway, or one made while the gateway was unreachable)."""
        serials: set[str] = set()
        for known in self.smap.sas.values():
            serials.update([known["serial"]] if known.get("serial") else known.get("candidates", []))
        for serial in sorted(serials):
            if self._revoked(serial):
                try:
                    if cut_off(self.settings, self.store, str(serial), actor="gateway-watcher", gw=self.gw):
                        log.info("gateway %s: cut off SAs of revoked %s", self.gateway, serial)
                except GatewayError as exc:
                    log.warning("gateway %s: cut-off of %s failed: %s", self.gateway, serial, exc)

    def _revoked(self, serial: str) -> bool:
        record = self.store.get_certificate(serial)
        return record is not None and record.status == "revoked"

    def handle(self, label: str, message: dict[str, Any]) -> None:
        up = message.get("up") == "yes"
        for name, body in _sas_of(message):
            sa = {"name": name, **body}
            if label == "ike-updown":
                self._ike_updown(sa, up)
            elif label == "child-updown":
                for child in (sa.get("child-sas") or {}).values():
                    emit("gateway.child." + ("up" if up else "down"), gateway=self.gateway,
                         **self._peer(sa), **child_record(child))
            elif label == "ike-rekey":
                old, new = sa.get("old") or {}, sa.get("new") or {}
                known = self.smap.sas.pop(sa_key({"name": name, **old}), None)
                if known is not None:
                    self.smap.sas[sa_key({"name": name, **new})] = known
                    self.smap.save()
                emit("gateway.ike.rekeyed", gateway=self.gateway, old_ike_id=old.get("uniqueid"),
                     **ike_record({"name": name, **new}), serial=(known or {}).get("serial"))
            elif label == "child-rekey":
                for child in (sa.get("child-sas") or {}).values():
                    old, new = child.get("old") or {}, child.get("new") or {}
                    emit("gateway.child.rekeyed", gateway=self.gateway, **self._peer(sa),
                         old_child_id=old.get("uniqueid"), **child_record(new))

    def _peer(self, sa: dict[str, Any]) -> dict[str, Any]:
        known = self.smap.sas.get(sa_key(sa)) or self.recent.get(sa_key(sa)) or {}
        return {"identity": sa.get("remote-id"), "ike_id": sa.get("uniqueid"), "serial": known.get("serial"),
                "remote_address": sa.get("remote-host"), "remote_port": _int(sa.get("remote-port"))}

    def _ike_updown(self, sa: dict[str, Any], up: bool) -> None:
        key = sa_key(sa)
        if up:
            with self._command() as session:
                cache = peer_certificates(session)
                count = sum(1 for s in ike_sas(session) if s.get("state") == "ESTABLISHED")
            # charon accepted the peer just now, after any revocation already cut off and flushed
            # charon's OCSP cache: a certificate revoked before cannot have authenticated this SA
            live = {serial: c for serial, c in cache.items() if not self._revoked(serial)}
            found = attribute_new_sa(sa, self.smap, live, datetime.now(UTC))
            self.smap.sas[key] = found
            self.smap.cached = set(cache)
            self.smap.save()
            metrics.gateway_established(self.gateway)
            metrics.gateway_tunnels(self.gateway, count)
            emit("gateway.ike.up", gateway=self.gateway, **ike_record(sa), serial=found["serial"],
                 serial_attribution=found["how"])
            return
        known: dict[str, Any] = self.smap.sas.pop(key, {})
        self.smap.save()
        if known:  # the CHILD SAs' down events follow: they still name the certificate
            self.recent[key] = known
            while len(self.recent) > 64:
                self.recent.pop(next(iter(self.recent)))
        # DELETING: a DELETE exchange ended it; CONNECTING: it never came up (authentication failed,
        # no proposal); any other state: an established SA lost (DPD timeout, failed rekey)
        state = sa.get("state")
        reason = ("deleted" if state in ("DELETING", "DESTROYING") else
                  "failed" if state == "CONNECTING" else "lost")
        metrics.gateway_down(self.gateway, reason)
        try:
            with self._command() as session:
                count = sum(1 for s in ike_sas(session) if s.get("state") == "ESTABLISHED")
            metrics.gateway_tunnels(self.gateway, count)
        except GatewayError:
            pass
        emit("gateway.ike.down", gateway=self.gateway, **ike_record(sa), serial=known.get("serial"),
             reason=reason)


def _sas_of(message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, value in message.items():
        if isinstance(value, dict):
            yield name, value


_WATCHERS: dict[str, Watcher] = {}
_WATCHERS_LOCK = threading.Lock()


def ensure_watcher(settings: Settings, store: Any) -> bool:
    """Start a watcher for each managed gateway in this process, or again if its thread died;
    True when one was started."""
    started = False
    with _WATCHERS_LOCK:
        for gw in fleet.managed(settings):
            current = _WATCHERS.get(gw.vici_socket)
            if current is not None and current.thread.is_alive():
                continue
            _WATCHERS[gw.vici_socket] = Watcher(settings, store, gw=gw).start()
            started = True
    return started
