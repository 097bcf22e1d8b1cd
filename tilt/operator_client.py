"""Register the operator's OAuth client with the identity service of a `tilt up` cluster
and print its ``lastro-operator`` Secret as YAML (for `kubectl apply -f -`).

Uses the dev bootstrap admin client that identity writes in its pod (dev only), through
the port-forward Tilt opens on https://localhost:7001 (the dev CA certificate names
localhost). Idempotent: an existing ``lastro-operator`` Secret is left as it is.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = "https://localhost:7001"
AUDIENCES = ["fraud", "identity", "accounts", "transactions", "notifications"]
SCOPES = ["fraud:admin", "privacy:admin"]


def kubectl(*args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["kubectl", "-n", "lastro", *args], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def call(method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
    context = ssl.create_default_context(cafile=str(ROOT / ".dev" / "ca" / "ca.pem"))
    request = urllib.request.Request(f"{IDENTITY}{path}", data=body, headers=headers, method=method)
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        return json.loads(response.read())


def main() -> None:
    if kubectl("get", "secret", "lastro-operator", "--ignore-not-found", "-o", "name").strip():
        return
    admin = kubectl(
        "exec", "deploy/lastro-identity", "--", "cat", "/tmp/lastro/secrets/identity_admin_secret"
    )
    admin_id, admin_secret = admin.strip().split(":")
    basic = base64.b64encode(f"{admin_id}:{admin_secret}".encode()).decode()
    form = urllib.parse.urlencode(
        {"grant_type": "client_credentials", "scope": "identity:admin", "audience": "identity"}
    ).encode()
    token = call(
        "POST",
        "/oauth/token",
        form,
        {"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
    )["access_token"]
    client = call(
        "POST",
        "/v1/clients",
        json.dumps(
            {
                "name": "lastro-operator",
                "grant_types": ["client_credentials"],
                "scopes": SCOPES,
                "audiences": AUDIENCES,
            }
        ).encode(),
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "lastro-operator", "namespace": "lastro"},
        "stringData": {"client-id": client["client_id"], "client-secret": client["client_secret"]},
    }
    yaml.safe_dump(secret, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
