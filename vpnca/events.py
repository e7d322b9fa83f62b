"""Structured logs: one JSON object a line, for people and for SIEMs; optional syslog over TLS.

Every issuance, renewal, revocation, authentication failure, policy refusal, CRL/OCSP publication
and gateway push is an event with who asked, for what, from where and how. Nothing secret is ever
written: a filter drops PEM private keys and any field named like a secret.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EVENTS = logging.getLogger("vpnca.events")
_SECRET_FIELD = re.compile(r"(pin|secret|password|passphrase|private|credential)", re.IGNORECASE)
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL)


def emit(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event; `fields` become top-level JSON keys (requester, identity, serial, profile, ...)."""
    EVENTS.log(level, event, extra={"event": event, "fields": fields})


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _PRIVATE_KEY.sub("[redacted private key]", value)
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: "[redacted]" if _SECRET_FIELD.search(k) else _clean(v) for k, v in value.items()}
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
        }
        event = getattr(record, "event", None)
        if event:
            data["event"] = event
            data.update(_clean(getattr(record, "fields", {})))
        else:
            data["message"] = _clean(record.getMessage())
        if record.exc_info:
            data["error"] = _clean(self.formatException(record.exc_info).splitlines()[-1])
        return json.dumps(data, default=str, separators=(",", ":"))


class SyslogTlsHandler(logging.Handler):
    """RFC 5425: RFC 5424 messages over TLS with octet-counting framing. Reconnects on failure and
    never blocks the service for long: a message that cannot be sent is dropped (and counted)."""

    def __init__(self, host: str, port: int, ca_file: str | None, app_name: str = "vpnca") -> None:
        super().__init__()
        self.address = (host, port)
        self.context = ssl.create_default_context(cafile=ca_file)
        self.app_name = app_name
        self.hostname = socket.gethostname()
        self.sock: ssl.SSLSocket | None = None
        self.dropped = 0
        self._lock = threading.Lock()

    def _connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection(self.address, timeout=2)
        return self.context.wrap_socket(raw, server_hostname=self.address[0])

    def emit(self, record: logging.LogRecord) -> None:
        severity = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}.get(record.levelname, 6)
        timestamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        message = (f"<{8 + severity}>1 {timestamp} {self.hostname} {self.app_name} {record.process} "
                   f"{getattr(record, 'event', '-') or '-'} - {self.format(record)}").encode()
        frame = f"{len(message)} ".encode() + message
        with self._lock:
            for _ in range(2):
                try:
                    if self.sock is None:
                        self.sock = self._connect()
                    self.sock.sendall(frame)
                    return
                except OSError:
                    if self.sock is not None:
                        self.sock.close()
                    self.sock = None
            self.dropped += 1

    def close(self) -> None:
        with self._lock:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
        super().close()


def configure_for(settings: Any, *, verbose: bool, quiet: bool = False) -> None:
    """configure_logging with what vpnca.toml says."""
    configure_logging(verbose=verbose, quiet=quiet, home=settings.home,
                      syslog=settings.logging.syslog_tls or None,
                      syslog_ca=settings.logging.syslog_ca_file or None)


def configure_logging(*, verbose: bool, quiet: bool = False, home: Path | None = None,
                      syslog: str | None = None, syslog_ca: str | None = None) -> None:
    """JSON lines to stderr (warnings, errors only when `quiet`, everything with -v), every event to
    VPNCA_HOME/log/vpnca.jsonl,
    and to a syslog server over TLS when configured. Safe to call again when the settings are known."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    formatter = JsonFormatter()
    stream = next((h for h in root.handlers if getattr(h, "_vpnca", "") == "stderr"), None)
    if stream is None:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(formatter)
        stream._vpnca = "stderr"  # type: ignore[attr-defined]
        root.addHandler(stream)
    stream.setLevel(logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    if home is not None and not any(getattr(h, "_vpnca", "") == "file" for h in root.handlers):
        (home / "log").mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(home / "log" / "vpnca.jsonl")
        file_handler.setLevel(logging.INFO)
        file_handler.setFormatter(formatter)
        file_handler._vpnca = "file"  # type: ignore[attr-defined]
        root.addHandler(file_handler)
    if syslog and not any(getattr(h, "_vpnca", "") == "syslog" for h in root.handlers):
        host, _, port = syslog.rpartition(":")
        handler = SyslogTlsHandler(host, int(port), syslog_ca)
        handler.setLevel(logging.INFO)
        handler.setFormatter(formatter)
        handler._vpnca = "syslog"  # type: ignore[attr-defined]
        root.addHandler(handler)
