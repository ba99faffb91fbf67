"""Self-signed certificates made with ``openssl``, for servers on a local control plane.

The operator's webhook makes one when no certificate is mounted (the local control plane);
the dev cluster's kubelet log endpoint and pod-network proxy make theirs. ``openssl``
rather than a Python library: kopf's own generator needs libraries that fail on this
OpenSSL 3.
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

__all__ = ["self_signed"]


def self_signed(cert: Path, key: Path, *, name: str, host: str = "127.0.0.1") -> None:
    """Write a one-year certificate for ``host`` (an IP address or a DNS name) to ``cert``
    and its key to ``key``; ``name`` is the subject's common name."""
    try:
        ipaddress.ip_address(host)
        san = f"IP:{host}"
    except ValueError:
        san = f"DNS:{host}"
    cert.parent.mkdir(parents=True, exist_ok=True)
    args = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
            "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}",
            "-keyout", str(key), "-out", str(cert)]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl req failed: {result.stderr.strip()}")
