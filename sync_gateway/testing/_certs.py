"""A throwaway certificate authority and a server certificate for 127.0.0.1, for ``wss://`` tests.

Why a CA and a separate leaf, not one self-signed certificate: Python 3.13's default context
verifies with ``VERIFY_X509_STRICT``, which refuses a self-signed end-entity certificate used as its
own trust anchor; a CA (basicConstraints critical, keyCertSign) that signs a leaf (serverAuth, SANs
``IP:127.0.0.1`` and ``DNS:localhost``) passes strict and non-strict verification alike, on every
Python and OpenSSL the package supports.

Made once per process (EC P-256: fast) with the ``cryptography`` package when it is installed,
else with the ``openssl`` command line tool; the files live in a temporary directory removed at exit.
"""
from __future__ import annotations

import atexit
import datetime
import os
import shutil
import subprocess
import tempfile
import threading
from typing import Optional

__all__ = ["Certificates", "certificates"]

_lock = threading.Lock()
_made: Optional["Certificates"] = None


class Certificates:
    """Paths of the PEM files: ``ca_file`` (trust this), ``cert_file`` + ``key_file`` (serve these)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.ca_file = os.path.join(directory, "ca.pem")
        self.cert_file = os.path.join(directory, "server.pem")
        self.key_file = os.path.join(directory, "server.key")


def certificates() -> Certificates:
    """The process's test CA and server certificate, made on first use.

    Raises :class:`RuntimeError` if neither ``cryptography`` nor a working ``openssl`` is available.
    """
    global _made
    with _lock:
        if _made is None:
            directory = tempfile.mkdtemp(prefix="sync_gateway-certs-")
            atexit.register(shutil.rmtree, directory, True)
            made = Certificates(directory)
            try:
                _with_cryptography(made)
            except ImportError:
                _with_openssl(made)
            _made = made
        return _made


def _with_cryptography(out: Certificates) -> None:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=7)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sync_gateway test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    with open(out.ca_file, "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(out.cert_file, "wb") as f:
        f.write(leaf.public_bytes(pem))
    with open(out.key_file, "wb") as f:
        f.write(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )


def _with_openssl(out: Certificates) -> None:
    d = out.directory
    ca_key, csr, ext = (os.path.join(d, n) for n in ("ca.key", "server.csr", "server.ext"))
    with open(ext, "w") as f:
        f.write(
            "basicConstraints=critical,CA:FALSE\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid\n"
        )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        ["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", out.ca_file, "-days", "7",
         "-subj", "/CN=sync_gateway test CA",
         "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["openssl", "req", *ec, "-keyout", out.key_file, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", csr, "-CA", out.ca_file, "-CAkey", ca_key, "-set_serial", "2",
         "-days", "7", "-out", out.cert_file, "-extfile", ext],
    ]
    for cmd in steps:
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeError(f"cannot make a test certificate: {exc}") from None
        if done.returncode != 0:
            err = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise RuntimeError(f"cannot make a test certificate: {cmd[1]} failed: {err[-1] if err else '?'}")
