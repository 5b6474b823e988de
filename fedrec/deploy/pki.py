"""Key material for a deployment: a CA, the SuperLink's TLS certificate, device keys.

TLS: the SuperLink presents a certificate signed by our own CA; devices trust only
that CA (``--root-certificates``). Device authentication: each SuperNode signs its
requests with its own EC private key (NIST P-384, what ``flwr supernode register``
accepts); the operator registers each device's public key with the SuperLink, and
a SuperLink started with ``--enable-supernode-auth`` refuses every other key.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedrec.errors import FedrecError

logger = logging.getLogger(__name__)

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
AUTHORIZED = "authorized-keys.txt"  # one device public-key path per line


@dataclass(frozen=True)
class DeviceKey:
    name: str
    private: Path
    public: Path


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if secret:
        path.chmod(0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrec"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_tls(out_dir: Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 365) -> dict[str, Path]:
    """Write a CA (``ca.crt``/``ca.key``) and a server certificate/key for ``hosts``.

    Returns the paths by role: ``ca``, ``ca-key``, ``cert``, ``key``. ``hosts`` are the
    names and IP addresses devices use to reach the SuperLink (the certificate's SANs).
    """
    if not hosts:
        raise FedrecError("give at least one host name or IP address for the server certificate")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedrec CA"))
        .issuer_name(_name("fedrec CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    paths = {"ca": out_dir / CA_CERT, "ca-key": out_dir / CA_KEY, "cert": out_dir / SERVER_CERT, "key": out_dir / SERVER_KEY}
    _write(paths["ca"], ca_cert.public_bytes(serialization.Encoding.PEM), secret=False)
    _write(paths["ca-key"], _private_pem(ca_key), secret=True)
    _write(paths["cert"], server_cert.public_bytes(serialization.Encoding.PEM), secret=False)
    _write(paths["key"], _private_pem(server_key), secret=True)
    logger.info("wrote a CA and a server certificate for %s", ", ".join(hosts))
    return paths


def make_device_key(out_dir: Path, name: str) -> DeviceKey:
    """One device's EC P-384 key pair, ``NAME.key`` and ``NAME.pub``, in OpenSSH format.

    Flower 1.41 reads the SuperNode's private key with ``load_ssh_private_key`` and
    ``flwr supernode register`` wants an SSH public key on a NIST curve.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    out = DeviceKey(name=name, private=out_dir / f"{name}.key", public=out_dir / f"{name}.pub")
    _write(out.private, private, secret=True)
    _write(out.public, public + f" {name}\n".encode(), secret=False)
    return out


def make_device_keys(out_dir: Path, names: list[str]) -> list[DeviceKey]:
    """Key pairs for ``names`` and ``authorized-keys.txt``: the public keys to register."""
    keys = [make_device_key(out_dir, name) for name in names]
    (out_dir / AUTHORIZED).write_text("".join(f"{k.public.resolve()}\n" for k in keys))
    logger.info("wrote %d device key pairs", len(keys))
    return keys


def authorized_keys(path: Path) -> list[Path]:
    """The public-key files listed in an ``authorized-keys.txt``."""
    if not path.is_file():
        raise FedrecError(f"{path}: no authorised-keys list; create one with `fedrec deploy keys`")
    return [Path(line.strip()) for line in path.read_text().splitlines() if line.strip()]
