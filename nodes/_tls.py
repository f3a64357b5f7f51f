"""The cluster's TLS material: a CA, node and client certificates, and SSL contexts.

A cluster has one CA (``migrate-node ca init``).  Every node and every
application gets a key and a certificate signed by it (``migrate-node cert
issue``), written into a *TLS dir* that holds three files:

    cert.pem   this party's certificate
    key.pem    its private key (mode 0600)
    ca.pem     the cluster CA's certificate, the only trust anchor

Keys are EC P-256.  Node certificates carry both the server and the client
extended key usage (a node serves, and calls its peers); client
certificates carry only the client one, so an application's certificate
cannot impersonate a node.  Subject alternative names cover the name given,
``localhost``, 127.0.0.1 and ::1, plus any ``extra_names``.

Both sides require a certificate signed by the cluster CA (mutual TLS,
``CERT_REQUIRED``), so a party the CA did not sign fails the TLS handshake,
before the node reads a single frame from it.

Every certificate has a random serial number, printed by ``cert issue`` and
``cert show`` and carried in ``Identity.serial``: that, or the name, is
what a revocation list names (``nodes._revocation``).  ``check_pair``
vets a TLS dir before a running node swaps it in (``nodes._credentials``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._errors import ConfigError

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"

CERT_ROLES = ("node", "client")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}\Z")
_ORGANIZATION = "wasm-migrate"
_CA_VALID_DAYS = 3650
#: 825 days is the longest validity browsers accept for a leaf certificate.
_LEAF_VALID_DAYS = 825


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init_ca(directory: Path, *, common_name: str = "wasm-migrate cluster CA") -> Path:
    """Create a cluster CA (``ca.pem``, ``ca-key.pem``) in ``directory``; return the certificate's path.

    Raises ConfigError if the directory already holds a CA.
    """
    directory = Path(directory)
    if (directory / CA_KEY_FILE).exists() or (directory / CA_FILE).exists():
        raise ConfigError(f"{directory} already holds a CA; refusing to overwrite it")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(directory / CA_KEY_FILE, _key_pem(key))
    (directory / CA_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return directory / CA_FILE


#: The CA keys that sign with SHA-256 (``ca init`` makes an EC one).
_CaKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | dsa.DSAPrivateKey


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, _CaKey]:
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / CA_FILE).read_bytes())
        key = serialization.load_pem_private_key((ca_dir / CA_KEY_FILE).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"no CA in {ca_dir} ({exc.filename} is missing); "
                          f"create one with `migrate-node ca init --dir {ca_dir}`") from None
    except ValueError as exc:
        raise ConfigError(f"the CA in {ca_dir} is unreadable: {exc}") from None
    if not isinstance(key, _CaKey):
        raise ConfigError(f"the CA key in {ca_dir} is a {type(key).__name__}; it must be an EC, RSA or DSA key")
    return cert, key


def _alt_names(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):  # keep order, drop repeats
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def issue_cert(ca_dir: Path, *, name: str, role: str, out_dir: Path,
               extra_names: tuple[str, ...] = ()) -> Path:
    """Issue a key and certificate for ``name`` into ``out_dir`` (a TLS dir); return its path.

    ``role`` is "node" (server and client use) or "client" (client use only).
    Raises ConfigError for a bad name or role, a missing CA, or an ``out_dir``
    that already holds a key.
    """
    if role not in CERT_ROLES:
        raise ConfigError(f"role must be one of {', '.join(CERT_ROLES)}, got {role!r}")
    for candidate in (name, *extra_names):
        if not _NAME.match(candidate) and not _is_ip(candidate):
            raise ConfigError(f"{candidate!r} is not a usable certificate name "
                              "(letters, digits, '.' and '-', or an IP address)")
    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    ca_cert, ca_key = _load_ca(ca_dir)
    if (out_dir / KEY_FILE).exists():
        raise ConfigError(f"{out_dir / KEY_FILE} exists; refusing to overwrite a key")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role == "node":
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_LEAF_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(
            _alt_names([name, *extra_names, "localhost", "127.0.0.1", "::1"])), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(out_dir / KEY_FILE, _key_pem(key))
    (out_dir / CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out_dir / CA_FILE).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return out_dir / CERT_FILE


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _context(purpose: ssl.Purpose, tls_dir: Path) -> ssl.SSLContext:
    tls_dir = Path(tls_dir)
    missing = [f for f in (CERT_FILE, KEY_FILE, CA_FILE) if not (tls_dir / f).is_file()]
    if missing:
        raise ConfigError(f"TLS dir {tls_dir} lacks {', '.join(missing)}; create it with "
                          "`migrate-node cert issue --ca CA_DIR --name NAME --role node|client "
                          f"--out {tls_dir}`")
    # Not ``ssl.create_default_context``: for a client it also trusts the
    # machine's CAs, so a certificate any public or company CA signed for
    # the name dialled would pass for a node.  Only the cluster's CA counts.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT if purpose is ssl.Purpose.SERVER_AUTH else ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_cert_chain(tls_dir / CERT_FILE, tls_dir / KEY_FILE)
        ctx.load_verify_locations(cafile=tls_dir / CA_FILE)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"TLS material in {tls_dir} is unusable: {exc}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(tls_dir: Path) -> ssl.SSLContext:
    """Return the context a node listens with: it requires a CA-signed client certificate.

    Raises ConfigError if the TLS dir is incomplete or unreadable.
    """
    return _context(ssl.Purpose.CLIENT_AUTH, tls_dir)


def client_context(tls_dir: Path) -> ssl.SSLContext:
    """Return the context to connect with: it presents our certificate and checks the node's.

    The node's certificate must be CA-signed and name the host we dial.
    Raises ConfigError if the TLS dir is incomplete or unreadable.
    """
    ctx = _context(ssl.Purpose.SERVER_AUTH, tls_dir)
    ctx.check_hostname = True
    return ctx


def certificate_subject(cert: dict[str, Any] | None) -> dict[str, str]:
    """Return the subject of a certificate as ``SSLSocket.getpeercert()`` gives it, by attribute.

    Our certificates carry ``commonName`` (the holder's name) and
    ``organizationalUnitName`` (its role: "node" or "client").
    """
    return {key: value for rdn in (cert or {}).get("subject", ()) for key, value in rdn}


@dataclass(frozen=True)
class Identity:
    """Who a certificate says its holder is: its ``role`` ("node" or "client") and the names it covers.

    ``names`` holds the commonName first, then the DNS subject alternative
    names; a certificate without a known role has role "".
    """

    role: str
    names: tuple[str, ...]
    serial: int = 0  # 0 when unknown

    @property
    def name(self) -> str:
        return self.names[0] if self.names else ""


def peer_identity(cert: dict[str, Any] | None) -> Identity:
    """The Identity of a certificate as ``SSLSocket.getpeercert()`` gives it."""
    subject = certificate_subject(cert)
    role = subject.get("organizationalUnitName", "")
    dns = [value for kind, value in (cert or {}).get("subjectAltName", ()) if kind == "DNS"]
    common = [subject["commonName"]] if "commonName" in subject else []
    try:
        serial = int((cert or {}).get("serialNumber", "0"), 16)
    except ValueError:
        serial = 0
    return Identity(role if role in CERT_ROLES else "", tuple(dict.fromkeys(common + dns)), serial)


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the certificate {path}: {exc}") from None


def own_identity(tls_dir: Path) -> Identity:
    """The Identity of the certificate in a TLS dir.  Raises ConfigError if it is missing or unreadable."""
    return certificate_identity(_read_cert(Path(tls_dir) / CERT_FILE))


def certificate_identity(cert: x509.Certificate) -> Identity:
    """The Identity a certificate names."""
    role = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    common = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    return Identity(role[0] if role and role[0] in CERT_ROLES else "", tuple(dict.fromkeys(common + dns)),
                    cert.serial_number)


def describe(path: Path) -> str:
    """One line about the certificate at ``path`` (a file or a TLS dir): name, role, serial, expiry.

    Raises ConfigError if it cannot be read.
    """
    path = Path(path)
    cert = _read_cert(path / CERT_FILE if path.is_dir() else path)
    identity = certificate_identity(cert)
    return (f"name {identity.name} role {identity.role or '?'} serial:{identity.serial:#x} "
            f"valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def check_pair(tls_dir: Path) -> Identity:
    """Check that a TLS dir holds a usable pair: readable, the key matches, signed by its CA and in date.

    Returns the certificate's Identity; raises ConfigError saying what is wrong.
    """
    tls_dir = Path(tls_dir)
    cert, ca = _read_cert(tls_dir / CERT_FILE), _read_cert(tls_dir / CA_FILE)
    try:
        key = serialization.load_pem_private_key((tls_dir / KEY_FILE).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the key {tls_dir / KEY_FILE}: {exc}") from None
    if key.public_key() != cert.public_key():
        raise ConfigError(f"the key {tls_dir / KEY_FILE} does not belong to the certificate {tls_dir / CERT_FILE}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigError(f"the certificate {tls_dir / CERT_FILE} is not signed by the CA {tls_dir / CA_FILE}: "
                          f"{exc or 'bad signature'}") from None
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ConfigError(f"the certificate {tls_dir / CERT_FILE} is not valid now (valid "
                          f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})")
    return certificate_identity(cert)


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
