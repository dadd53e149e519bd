"""A self-signed certificate for serving HTTPS on this machine (`selva-rt serve --make-cert DIR`).

    cert, key = make_self_signed(Path("~/.selva-tls").expanduser())
    selva-rt serve --tls-cert CERT --tls-key KEY ...

Premiere's UXP panels on macOS refuse plain http, even to localhost. The certificate names
localhost, 127.0.0.1 and ::1 (subjectAltName: what browsers check; the common name alone is not
enough) and is its own issuer, so the machine must be told to trust it once.

Why the `cryptography` package rather than the `openssl` command: the certificate needs its
subjectAltName, and the openssl found on a machine varies (macOS ships LibreSSL, whose options
differ from OpenSSL's; Windows ships none), while the package is one wheel with one API
everywhere.
"""

import datetime
import ipaddress
import os
from pathlib import Path

from ..errors import OutputError, UsageError

CERT, KEY = "selva-rt-localhost.pem", "selva-rt-localhost-key.pem"
DAYS = 825  # the longest validity Apple's platforms accept for a TLS server certificate


def make_self_signed(folder: Path, force: bool = False) -> tuple[Path, Path]:
    """Write folder/selva-rt-localhost.pem and its key (readable by the owner only); returns
    their paths. Refuses to overwrite them without `force`."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise UsageError("--make-cert needs cryptography: pip install 'selva-rt[serve]'") from None

    cert_path, key_path = folder / CERT, folder / KEY
    existing = [p for p in (cert_path, key_path) if p.exists()]
    if existing and not force:
        raise OutputError(f"{existing[0]} already exists; pass --force to make a new pair")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "selva-rt on localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    hosts = [x509.DNSName("localhost")] + [
        x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=DAYS))
        .add_extension(x509.SubjectAlternativeName(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            0o600,
        )
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as err:
        raise OutputError(f"cannot write the certificate in {folder}: {err.strerror}") from None
    return cert_path, key_path


def check_pair(cert: Path, key: Path) -> None:
    """A UsageError, before anything loads, unless cert and key are a usable PEM pair."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as err:
        raise UsageError(f"{err.filename} does not exist; pass --tls-cert and --tls-key") from None
    except (ssl.SSLError, OSError) as err:
        reason = getattr(err, "reason", None) or err.strerror or type(err).__name__
        raise UsageError(
            f"{cert} and {key} are not a usable certificate and key: {reason}"
        ) from None


def _write(path: Path, data: bytes, mode: int) -> None:
    """All or nothing, with `mode` from the start (a key is never readable by others)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
