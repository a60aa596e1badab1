"""The hub's VEN over HTTPS with client certificates and signed payloads, against a real openleadr VTN
that requires both: a CA, the VTN's and the VEN's certificates are generated here. The VEN pins the
VTN's certificate fingerprint; payloads signed by any other certificate are refused, and their events
are not acted on."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from openleadr import OpenADRServer
from openleadr.messaging import create_message
from openleadr.service import VTNService
from openleadr.utils import certificate_fingerprint

from adapters.openadr.translate import load_mapping
from adapters.openadr.ven import HubVen, VtnConfig
from tests.test_openadr_ven import (  # noqa: F401 - fixtures
    VEN_ID,
    VTN_ID,
    Vtn,
    actions,
    adr_hub,
    clock,
    contract,
    free_port,
    settled,
    until,
)

SIGNATURE = "<ds:Signature"


@dataclass(frozen=True)
class Party:
    cert: Path
    key: Path

    @property
    def fingerprint(self) -> str:
        return certificate_fingerprint(self.cert.read_bytes())


@dataclass(frozen=True)
class Pki:
    ca: Path
    vtn: Party
    ven: Party
    impostor: Party  # issued by the same CA, so TLS accepts it; only the pinned fingerprint tells


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(folder: Path, cn: str, ca_key: rsa.RSAPrivateKey, ca_name: x509.Name, *, server: bool) -> Party:
    key = _key()
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
               .not_valid_after(now + timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    party = Party(folder / f"{cn}.pem", folder / f"{cn}.key")
    party.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    party.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return party


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_name = _key(), _name("mdmhub test CA")
    now = datetime.now(UTC)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
          .not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return Pki(folder / "ca.pem", _issue(folder, "vtn", ca_key, ca_name, server=True),
               _issue(folder, "ven", ca_key, ca_name, server=False),
               _issue(folder, "impostor", ca_key, ca_name, server=True))


class SecureVtn(Vtn):
    """The test VTN over HTTPS: it requires the VEN's client certificate (from the CA), knows the VEN's
    fingerprint, verifies the VEN's signatures and signs what it sends with its own certificate."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        super().__init__()
        self.url = f"https://127.0.0.1:{self.port}/OpenADR2/Simple/2.0b"
        self.server = OpenADRServer(vtn_id=VTN_ID, http_host="127.0.0.1", http_port=self.port,
                                    requested_poll_freq=timedelta(seconds=0), ven_lookup=self.lookup,
                                    cert=str(pki.vtn.cert), key=str(pki.vtn.key), http_cert=str(pki.vtn.cert),
                                    http_key=str(pki.vtn.key), http_ca_file=str(pki.ca),
                                    verify_message_signatures=True, show_fingerprint=False,
                                    show_server_cert_domain=False)
        self.server.add_handler("on_create_party_registration", self.on_register)
        self.server.add_handler("on_register_report", self.on_register_report)
        self.reported: list[tuple[datetime, float]] = []

    def on_register_report(self, ven_id: str, resource_id: str, measurement: str, unit: str, scale: str,
                           min_sampling_interval: timedelta, max_sampling_interval: timedelta) -> tuple[Any, ...] | None:
        if measurement == "Status":
            return None  # openleadr's VTN passes report values to callbacks as floats only
        return self.reported.extend, timedelta(seconds=1)

    def lookup(self, ven_id: str) -> dict[str, Any] | None:
        if ven_id != VEN_ID:
            return None
        return {"ven_id": ven_id, "registration_id": self.registered.get(ven_id),
                "fingerprint": self.pki.ven.fingerprint}

    def sign_as(self, party: Party) -> None:
        """From now on the VTN's payloads are signed with ``party``'s certificate (openleadr keeps the
        VTN's signer on the service class)."""
        VTNService._create_message = partial(create_message, cert=party.cert.read_bytes(),
                                             key=party.key.read_bytes(), passphrase=None)


@pytest.fixture
async def svtn(pki: Pki) -> AsyncIterator[SecureVtn]:
    v = SecureVtn(pki)
    await v.server.run_async()
    yield v
    await v.server.stop()


def secure_ven(hub: Any, vtn: SecureVtn, pki: Pki, *, fingerprint: str) -> HubVen:
    cfg = VtnConfig(vtn.url, "mdmhub", vtn_id=VTN_ID, poll_interval_s=0.05, retry_max_s=0.5,
                    cert_file=pki.ven.cert, key_file=pki.ven.key, ca_file=pki.ca, sign_messages=True,
                    vtn_fingerprint=fingerprint)
    return HubVen(hub, cfg, load_mapping())


async def test_signed_messages_over_tls_carry_an_event_to_the_meters(adr_hub, svtn, pki, clock) -> None:
    ven = secure_ven(adr_hub, svtn, pki, fingerprint=pki.vtn.fingerprint)
    sent: list[str] = []
    received: list[str] = []
    ven.add_hook("before_send_xml", sent.append)
    ven.add_hook("after_receive_xml", received.append)
    await ven.start()
    try:
        await until(lambda: ven.registered)
        start = clock.now + timedelta(minutes=10)
        svtn.publish(svtn.event("EV-TLS", start))
        assert await until(lambda: svtn.answers) == [("EV-TLS", "optIn")]
        await settled(adr_hub)
        await until(lambda: svtn.reported, timeout=5)
    finally:
        await ven.stop()
    assert sorted(actions(adr_hub)) == [("EV-TLS", 0, "LD-000001", "reserved"), ("EV-TLS", 0, "LD-000002", "reserved")]
    clock.now = start + timedelta(minutes=1)
    assert await contract(adr_hub, "LD-000001") == 20
    assert sent and all(SIGNATURE in x for x in sent)          # every payload the VEN sent was signed
    assert svtn.reported                                       # its own oadrUpdateReport too: the VTN verified it
    assert any("oadrUpdateReport" in x for x in sent)
    created = [x for x in received if "oadrDistributeEvent" in x]
    assert created and all(SIGNATURE in x for x in created)    # and the VTN's events came signed


async def test_payloads_signed_by_another_certificate_are_refused_and_not_acted_on(adr_hub, svtn, pki, clock) -> None:
    ven = secure_ven(adr_hub, svtn, pki, fingerprint=pki.vtn.fingerprint)
    parsed: list[str] = []
    ven.add_hook("before_parse_xml", parsed.append)   # reached only past the fingerprint and signature checks
    await ven.start()
    try:
        await until(lambda: ven.registered)
        svtn.sign_as(pki.impostor)        # a VTN the CA vouches for, but not the one the VEN pinned
        parsed_before = len(parsed)
        svtn.publish(svtn.event("EV-IMPOSTOR", clock.now + timedelta(minutes=10)))
        failures = ven.failures
        await until(lambda: ven.failures >= failures + 3)   # each poll's answer refused
        await settled(adr_hub)
        assert svtn.answers == []
        assert adr_hub.adr.list_events()["total"] == 0 and actions(adr_hub) == []
        assert len(parsed) == parsed_before
        assert adr_hub.head_ends.port(1).reservations() == []
        svtn.sign_as(pki.vtn)             # the genuine VTN again, sending its list anew: now it goes through
        svtn.server.events_updated[VEN_ID] = True
        assert await until(lambda: svtn.answers, timeout=15) == [("EV-IMPOSTOR", "optIn")]
    finally:
        svtn.sign_as(pki.vtn)
        await ven.stop()


async def test_a_ven_pinning_another_fingerprint_never_registers(adr_hub, svtn, pki) -> None:
    ven = secure_ven(adr_hub, svtn, pki, fingerprint=pki.impostor.fingerprint)
    await ven.start()
    try:
        await until(lambda: ven.failures >= 2)
        assert not ven.registered
    finally:
        await ven.stop()
