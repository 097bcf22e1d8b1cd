"""TLS contexts for every HTTP hop: servers present a dev-CA (or mounted) certificate,
clients verify against the configured CA bundle. Plain HTTP is never served.

Both sides speak TLS 1.3, or TLS 1.2 with forward-secret AEAD suites only (ECDHE with
AES-GCM or ChaCha20-Poly1305, as Mozilla's "intermediate" profile): CBC suites such as
``ECDHE-ECDSA-AES256-SHA384`` are refused in the handshake. TLS 1.3 suites are all AEAD.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final

TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"


def _restrict(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    return ctx


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = _restrict(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def client_context(ca_file: Path) -> ssl.SSLContext:
    return _restrict(ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file)))
