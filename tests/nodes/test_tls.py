"""The cluster CA, certificates and SSL contexts, checked in memory and over loopback TLS."""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import stat
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nodes import ConfigError, client_context, init_ca, issue_cert, server_context
from nodes._tls import certificate_subject, check_pair, is_loopback, own_identity


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca")
    return tmp_path / "ca"


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_is_a_p256_ca_with_a_private_key(ca):
    cert = load(ca / "ca.pem")
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE((ca / "ca-key.pem").stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="already holds a CA"):
        init_ca(ca)


@pytest.mark.parametrize("role, usages", [
    ("node", {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
    ("client", {ExtendedKeyUsageOID.CLIENT_AUTH}),
])
def test_issued_certificates_name_their_holder_and_role(ca, tmp_path, role, usages):
    issue_cert(ca, name="edge-1", role=role, out_dir=tmp_path / "tls", extra_names=("10.0.0.7", "edge.lan"))
    cert = load(tmp_path / "tls" / "cert.pem")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge-1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == role
    assert cert.issuer == load(ca / "ca.pem").subject
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == usages
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"edge-1", "edge.lan", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"), ipaddress.ip_address("10.0.0.7")}
    load(ca / "ca.pem").public_key().verify(  # really signed by the CA
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    assert (tmp_path / "tls" / "ca.pem").read_bytes() == (ca / "ca.pem").read_bytes()
    assert stat.S_IMODE((tmp_path / "tls" / "key.pem").stat().st_mode) == 0o600


def test_issue_refuses_bad_input(ca, tmp_path):
    with pytest.raises(ConfigError, match="role must be"):
        issue_cert(ca, name="x", role="admin", out_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="not a usable certificate name"):
        issue_cert(ca, name="bad name!", role="node", out_dir=tmp_path / "b")
    with pytest.raises(ConfigError, match="no CA in"):
        issue_cert(tmp_path / "nowhere", name="x", role="node", out_dir=tmp_path / "c")
    issue_cert(ca, name="x", role="node", out_dir=tmp_path / "d")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        issue_cert(ca, name="x", role="node", out_dir=tmp_path / "d")


def test_issue_refuses_a_ca_key_that_cannot_sign_with_sha256(ca, tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    (ca / "ca-key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    with pytest.raises(ConfigError, match="is a .*Ed25519PrivateKey; it must be an EC, RSA or DSA key"):
        issue_cert(ca, name="x", role="node", out_dir=tmp_path / "x")


def test_contexts_require_certificates_both_ways(ca, tmp_path):
    issue_cert(ca, name="n", role="node", out_dir=tmp_path / "n")
    server, client = server_context(tmp_path / "n"), client_context(tmp_path / "n")
    assert server.verify_mode == client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname
    assert server.minimum_version == ssl.TLSVersion.TLSv1_3
    with pytest.raises(ConfigError, match="lacks cert.pem, key.pem, ca.pem"):
        server_context(tmp_path / "empty")


def test_loopback_detection():
    assert all(map(is_loopback, ["127.0.0.1", "127.8.0.1", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.org"]))


# --- handshakes over loopback ------------------------------------------------------


async def handshake(server_dir: Path, client_dir: Path, *, server_hostname: str = "127.0.0.1"):
    """Run one TLS handshake; return (server outcome, client outcome): the peer's subject or an exception."""
    outcomes: dict[str, object] = {}
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def serve_one():
        tcp = await listeners[0].accept()
        stream = trio.SSLStream(tcp, server_context(server_dir), server_side=True)
        try:
            await stream.do_handshake()
            await stream.send_all(b"ok")  # TLS 1.3 clients learn of refusal on their first read
            outcomes["server"] = certificate_subject(stream.getpeercert())
        except trio.BrokenResourceError as exc:
            outcomes["server"] = exc
        await trio.aclose_forcefully(stream)

    async def dial():
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, client_context(client_dir), server_hostname=server_hostname)
        try:
            await stream.do_handshake()
            assert await stream.receive_some(2) == b"ok"
            outcomes["client"] = certificate_subject(stream.getpeercert())
        except (trio.BrokenResourceError, AssertionError) as exc:
            outcomes["client"] = exc
        await trio.aclose_forcefully(stream)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one)
            nursery.start_soon(dial)
    await listeners[0].aclose()
    return outcomes["server"], outcomes["client"]


@pytest.fixture
def cluster(tmp_path: Path) -> dict[str, Path]:
    init_ca(tmp_path / "ca")
    init_ca(tmp_path / "rogue-ca")
    dirs = {}
    for ca_name, name, role in [("ca", "edge-1", "node"), ("ca", "app", "client"),
                                ("rogue-ca", "rogue", "client"), ("rogue-ca", "rogue-node", "node")]:
        dirs[name] = tmp_path / name
        issue_cert(tmp_path / ca_name, name=name, role=role, out_dir=dirs[name])
    return dirs


async def test_mutual_tls_between_parties_of_one_cluster(cluster):
    server_saw, client_saw = await handshake(cluster["edge-1"], cluster["app"])
    assert server_saw == {"organizationName": "wasm-migrate", "organizationalUnitName": "client",
                          "commonName": "app"}
    assert (client_saw["commonName"], client_saw["organizationalUnitName"]) == ("edge-1", "node")


async def test_node_refuses_a_client_certificate_another_ca_signed(cluster, tmp_path):
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    for name in ("cert.pem", "key.pem"):  # rogue identity, but it trusts our CA
        (impostor / name).write_bytes((cluster["rogue"] / name).read_bytes())
    (impostor / "ca.pem").write_bytes((cluster["app"] / "ca.pem").read_bytes())
    server, client = await handshake(cluster["edge-1"], impostor)
    assert isinstance(server, trio.BrokenResourceError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(server.__cause__)
    assert isinstance(client, Exception)


@pytest.fixture
def rogue_ca_trusted_by_the_system(cluster, tmp_path, monkeypatch):
    """The rogue CA in the system's default trust store (OpenSSL reads ``SSL_CERT_FILE`` for it)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "rogue-ca" / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    assert ssl.get_default_verify_paths().cafile == str(tmp_path / "rogue-ca" / "ca.pem")


async def test_node_trusts_only_the_cluster_ca_not_the_systems(cluster, tmp_path, rogue_ca_trusted_by_the_system):
    """A certificate from a CA the machine trusts (a public or a company CA) is no cluster member."""
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    for name in ("cert.pem", "key.pem"):
        (impostor / name).write_bytes((cluster["rogue"] / name).read_bytes())
    (impostor / "ca.pem").write_bytes((cluster["app"] / "ca.pem").read_bytes())
    server, client = await handshake(cluster["edge-1"], impostor)
    assert isinstance(server, trio.BrokenResourceError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(server.__cause__)


async def test_client_trusts_only_the_cluster_ca_not_the_systems(cluster, rogue_ca_trusted_by_the_system):
    server, client = await handshake(cluster["rogue-node"], cluster["app"])
    assert isinstance(client, trio.BrokenResourceError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(client.__cause__)


async def test_client_refuses_a_node_another_ca_signed(cluster):
    server, client = await handshake(cluster["rogue-node"], cluster["app"])
    assert isinstance(client, trio.BrokenResourceError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(client.__cause__)


async def test_a_client_certificate_cannot_serve(cluster, tmp_path):
    app_as_server = tmp_path / "app-as-server"
    app_as_server.mkdir()
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (app_as_server / name).write_bytes((cluster["app"] / name).read_bytes())
    server, client = await handshake(app_as_server, cluster["edge-1"])
    assert isinstance(client, trio.BrokenResourceError)  # no serverAuth usage


async def test_client_checks_the_name_it_dialled(cluster):
    server, client = await handshake(cluster["edge-1"], cluster["app"], server_hostname="cloud-1")
    assert isinstance(client, trio.BrokenResourceError)
    assert "Hostname mismatch" in str(client.__cause__) or "CERTIFICATE_VERIFY_FAILED" in str(client.__cause__)


def test_check_pair_names_what_is_wrong_with_a_tls_dir(cluster, tmp_path):
    assert check_pair(cluster["edge-1"]).name == "edge-1"
    assert check_pair(cluster["edge-1"]).serial == own_identity(cluster["edge-1"]).serial > 0
    broken = tmp_path / "broken"
    shutil.copytree(cluster["edge-1"], broken)
    (broken / "key.pem").write_bytes((cluster["app"] / "key.pem").read_bytes())
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        check_pair(broken)
    (broken / "ca.pem").write_bytes((cluster["rogue"] / "ca.pem").read_bytes())
    (broken / "key.pem").write_bytes((cluster["edge-1"] / "key.pem").read_bytes())
    with pytest.raises(ConfigError, match="is not signed by the CA"):
        check_pair(broken)
    (broken / "cert.pem").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="cannot read the certificate"):
        check_pair(broken)
