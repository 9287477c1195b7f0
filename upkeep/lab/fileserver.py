"""The lab's HTTPS file server: real nginx, a throwaway CA, basic auth, upload-once support/ area."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from upkeep.lab import procs

NGINX = "/usr/sbin/nginx"
USER = "upkeep"
START_TIMEOUT = 5.0


class FileServerError(RuntimeError):
    pass


@dataclass(frozen=True)
class FileServer:
    state_dir: Path  # <lab>/fileserver

    @property
    def root(self) -> Path:
        return self.state_dir / "root"

    @property
    def conf(self) -> Path:
        return self.state_dir / "nginx.conf"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "nginx.pid"

    @property
    def error_log(self) -> Path:
        return self.state_dir / "error.log"

    @property
    def ca(self) -> Path:
        return self.state_dir / "ca.pem"

    def pid(self) -> int | None:
        return procs.read_pid(self.pidfile, str(self.conf))

    def prepare(self) -> str:
        """Write CA, server cert, htpasswd and directories; returns the new random password."""
        for sub in ("releases", "support"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.state_dir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        write_certs(self.state_dir)
        password = secrets.token_urlsafe(18)
        _write_private(self.state_dir / "htpasswd", f"{USER}:{ssha(password)}\n")
        return password

    def start(self, port: int) -> int:
        """Start nginx on 127.0.0.1:port; returns the port it got once it completes a TLS handshake.

        nginx binds before it daemonizes, so a port taken since allocation shows up as the launcher's
        exit status; then it retries on a fresh port (twice at most).
        """
        for attempt in range(3):
            self.conf.write_text(render_conf(self.state_dir, self.root, port))
            self.pidfile.unlink(missing_ok=True)
            cmd = [NGINX, "-p", f"{self.state_dir}/", "-c", str(self.conf), "-e", str(self.error_log)]
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=START_TIMEOUT)
            if proc.returncode == 0:
                break
            err = proc.stderr.decode(errors="replace").strip()
            if attempt == 2 or "Address already in use" not in err:
                raise FileServerError(f"nginx exited {proc.returncode}: {err}\n{procs.tail(self.error_log)}")
            port = procs.free_ports(1)[0]
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.pid() and procs.tls_ready(port, self.ca):
                return port
            time.sleep(0.005)
        raise FileServerError(f"nginx on port {port} did not come up\n{procs.tail(self.error_log)}")

    def stop(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        procs.stop_tree(pid)  # master + workers
        self.pidfile.unlink(missing_ok=True)
        return True


def ssha(password: str) -> str:
    """nginx's {SSHA} scheme: base64(sha1(password + salt) + salt)."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt, usedforsecurity=False).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _write_private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def write_certs(state_dir: Path) -> None:
    """A lab CA and a 127.0.0.1/localhost server cert it signed; strict-X.509 clean (SKI/AKI, critical BC)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Upkeep lab CA {now:%Y%m%dT%H%M%SZ}")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, procs.LOCALHOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(procs.LOCALHOST)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (state_dir / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    _write_private(state_dir / "ca-key.pem", _key_pem(ca_key))
    (state_dir / "server.pem").write_bytes(cert.public_bytes(pem))
    _write_private(state_dir / "server-key.pem", _key_pem(key))


def render_conf(state_dir: Path, root: Path, port: int) -> str:
    tmp = state_dir / "tmp"
    auth = f'auth_basic "upkeep lab"; auth_basic_user_file {state_dir / "htpasswd"};'
    # Workers must read lab files that may sit in root-only dirs; nginx ignores `user` unless root.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""# generated by upkeep.lab; rewritten at every start
{user}worker_processes 1;
pid {state_dir / "nginx.pid"};
error_log {state_dir / "error.log"} notice;
events {{ worker_connections 512; }}
http {{
    default_type application/octet-stream;
    types {{ application/json json; text/plain sha256 txt log; application/gzip gz; }}
    access_log {state_dir / "access.log"};
    client_body_temp_path {tmp / "client_body"};
    proxy_temp_path {tmp / "proxy"};
    fastcgi_temp_path {tmp / "fastcgi"};
    uwsgi_temp_path {tmp / "uwsgi"};
    scgi_temp_path {tmp / "scgi"};
    server_tokens off;
    sendfile on;
    server {{
        listen {procs.LOCALHOST}:{port} ssl;
        server_name localhost {procs.LOCALHOST};
        ssl_certificate {state_dir / "server.pem"};
        ssl_certificate_key {state_dir / "server-key.pem"};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {root};
        autoindex off;
        location / {{ return 404; }}
        location ~ /$ {{ return 404; }}  # no directory listings, not even a 403 hint
        location /releases/ {{
            {auth}
            # GET/HEAD (with Range) from the static module; other methods get its 405.
        }}
        location /support/ {{
            {auth}
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            client_max_body_size 0;
            # Uploads never overwrite. nginx's PUT would, so a PUT to an existing path is re-pointed at
            # "<path>/", which the DAV module answers with 409 - after the auth phase, so an anonymous
            # client learns nothing. (Two racing PUTs to one new path can still both win; last wins.)
            set $upkeep_put_existing "";
            if (-e $request_filename) {{ set $upkeep_put_existing $request_method; }}
            if ($upkeep_put_existing = PUT) {{ rewrite ^ $uri/ break; }}
        }}
    }}
}}
"""
