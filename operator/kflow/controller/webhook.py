"""The validating admission webhook's server and certificate.

In a cluster the certificate comes from a Secret (the chart's); on the local control
plane a self-signed one is made at start with ``openssl`` (kopf's own generator needs
libraries that fail on this OpenSSL 3). kopf serves the webhook and keeps the
ValidatingWebhookConfiguration (with its CA bundle) up to date. Its failure policy is
Ignore: when the webhook is unreachable, the operator reports the same error on the
run's status instead of running it.
"""

from __future__ import annotations

import ipaddress
import subprocess
import tempfile
from pathlib import Path

import kopf

from kflow.settings import OperatorSettings

__all__ = ["webhook_server"]


def _self_signed(folder: Path, host: str) -> tuple[Path, Path]:
    cert, key = folder / "tls.crt", folder / "tls.key"
    try:
        ipaddress.ip_address(host)
        san = f"IP:{host}"
    except ValueError:
        san = f"DNS:{host}"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
         "-subj", "/CN=kflow-webhook", "-addext", f"subjectAltName={san}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def webhook_server(settings: OperatorSettings) -> kopf.WebhookServer:
    if settings.webhook_cert_dir is not None:
        folder = settings.webhook_cert_dir
        cert, key, ca = folder / "tls.crt", folder / "tls.key", folder / "ca.crt"
    else:
        cert, key = _self_signed(
            Path(tempfile.mkdtemp(prefix="kflow-webhook-")), settings.webhook_host
        )
        ca = cert
    return kopf.WebhookServer(
        addr="0.0.0.0",
        port=settings.webhook_port,
        host=settings.webhook_host,
        certfile=cert,
        pkeyfile=key,
        cafile=ca,
    )
