"""RFC 5424 syslog to the NMS, over UDP (one message per datagram, RFC 5426) or TCP with
octet-counting framing (RFC 6587 §3.4.1).

The stdlib's ``logging.handlers.SysLogHandler`` writes the older BSD format (RFC 3164) with no
structured data, so messages are formatted here; the format is small and fixed::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [alert@32473 id=".." code=".." ...] BOM MSG

MSGID is the alert code; the structured data element repeats it with the alert id, ld_id, he_id
and source, so an NMS can filter without parsing the free text. 32473 is the private enterprise
number RFC 5612 reserves for documentation; an operator with its own number sets ``sd_id``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from hub.services.alerts import AlertRecord

FACILITIES = {"user": 1, "daemon": 3, **{f"local{n}": 16 + n for n in range(8)}}
SEVERITY_CODES = {"emergency": 0, "alert": 1, "critical": 2, "error": 3, "warning": 4, "notice": 5,
                  "info": 6, "debug": 7}
SD_ID = "alert@32473"
_BOM = "\ufeff".encode()
_NIL = "-"


def _header_field(value: str | None, limit: int) -> str:
    """A header token: printable US-ASCII without spaces, cut to ``limit``; empty becomes NILVALUE."""
    cleaned = "".join(ch for ch in (value or "") if 33 <= ord(ch) <= 126)[:limit]
    return cleaned or _NIL


def _param_value(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_rfc5424(alert: AlertRecord, *, facility: str = "local0", hostname: str | None = None,
                   app_name: str = "mdmhub", procid: str | None = None, sd_id: str = SD_ID) -> bytes:
    """One alert as an RFC 5424 message (no transport framing)."""
    pri = FACILITIES[facility] * 8 + SEVERITY_CODES.get(alert.severity, SEVERITY_CODES["warning"])
    stamp = alert.raised_at.isoformat(timespec="microseconds").replace("+00:00", "Z")
    params = {"id": alert.id, "code": alert.code, "ld_id": alert.ld_id, "he_id": alert.he_id,
              "source": alert.source}
    sd = "[" + sd_id + "".join(f' {name}="{_param_value(value)}"' for name, value in params.items()
                               if value is not None) + "]"
    header = " ".join([f"<{pri}>1", stamp, _header_field(hostname or socket.gethostname(), 255),
                       _header_field(app_name, 48), _header_field(procid or str(os.getpid()), 128),
                       _header_field(alert.code, 32), sd])
    return header.encode("utf-8") + b" " + _BOM + alert.message.encode("utf-8")


def frame_octet_counting(message: bytes) -> bytes:
    """RFC 6587 octet-counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


@dataclass
class SyslogNotifier:
    """An :class:`hub.services.alerts.AlertNotifier` sending each alert as one syslog message.

    A TCP connection is opened per delivery and closed after it, so a restarted NMS needs no
    reconnect logic. UDP cannot tell a listener that is down from one that is up: a datagram that
    left the host counts as delivered.
    """

    host: str = "127.0.0.1"
    port: int = 514
    transport: Literal["udp", "tcp"] = "udp"
    app_name: str = "mdmhub"
    facility: str = "local0"
    hostname: str | None = None
    timeout_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.facility not in FACILITIES:
            raise ValueError(f"unknown syslog facility {self.facility!r}; known: {', '.join(FACILITIES)}")

    @classmethod
    def from_settings(cls, nms: object) -> SyslogNotifier:
        """From the ``[nms]`` settings section."""
        names = ("host", "port", "transport", "app_name", "facility", "hostname", "timeout_seconds")
        return cls(**{name: getattr(nms, name) for name in names})

    def format(self, alert: AlertRecord) -> bytes:
        return format_rfc5424(alert, facility=self.facility, hostname=self.hostname, app_name=self.app_name)

    def deliver(self, alerts: Sequence[AlertRecord]) -> int:
        messages = [self.format(alert) for alert in alerts]
        if self.transport == "tcp":
            return self._send_tcp(messages)
        return self._send_udp(messages)

    def _send_udp(self, messages: list[bytes]) -> int:
        family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0][0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(self.timeout_seconds)
            for sent, message in enumerate(messages):
                try:
                    sock.sendto(message, (self.host, self.port))
                except OSError:
                    return sent
        return len(messages)

    def _send_tcp(self, messages: list[bytes]) -> int:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_seconds)
        except OSError:
            return 0
        with sock:
            for sent, message in enumerate(messages):
                try:
                    sock.sendall(frame_octet_counting(message))
                except OSError:
                    return sent
        return len(messages)
