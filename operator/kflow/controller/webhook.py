"""The validating admission webhook's server and certificate.

In a cluster the certificate comes from a Secret (the chart's); on the local control
plane a self-signed one is made at start (`kflow.certs`). kopf serves the webhook and keeps the
ValidatingWebhookConfiguration (with its CA bundle) up to date. Its failure policy is
Ignore: when the webhook is unreachable, the operator reports the same error on the
run's status instead of running it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import kopf

from kflow.certs import self_signed
from kflow.settings import OperatorSettings

__all__ = ["webhook_server"]


def webhook_server(settings: OperatorSettings) -> kopf.WebhookServer:
    if settings.webhook_cert_dir is not None:
        folder = settings.webhook_cert_dir
        cert, key, ca = folder / "tls.crt", folder / "tls.key", folder / "ca.crt"
    else:
        folder = Path(tempfile.mkdtemp(prefix="kflow-webhook-"))
        cert, key = folder / "tls.crt", folder / "tls.key"
        self_signed(cert, key, name="kflow-webhook", host=settings.webhook_host)
        ca = cert
    return kopf.WebhookServer(
        addr="0.0.0.0",
        port=settings.webhook_port,
        host=settings.webhook_host,
        certfile=cert,
        pkeyfile=key,
        cafile=ca,
    )
