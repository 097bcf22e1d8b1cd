"""Register the OAuth clients the chart reads from Secrets with the identity service of
a `tilt up` cluster and print those Secrets as YAML (for `kubectl apply -f -`): the
operator's (``lastro-operator``) and the accounts service's data-subject fan-out client
(``lastro-accounts-privacy``, docs/privacy.md).

Uses the dev bootstrap admin client that identity writes in its pod (dev only), through
the port-forward Tilt opens on https://localhost:7001 (the dev CA certificate names
localhost). Idempotent: a Secret that exists already is left as it is.
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
# Secret name -> (scopes, audiences) of the client whose credentials it holds.
CLIENTS = {
    "lastro-operator": (["fraud:admin", "privacy:admin"], AUDIENCES),
    "lastro-accounts-privacy": (["privacy:admin"], AUDIENCES),
}


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


def admin_token() -> str:
    admin = kubectl(
        "exec", "deploy/lastro-identity", "--", "cat", "/tmp/lastro/secrets/identity_admin_secret"
    )
    admin_id, admin_secret = admin.strip().split(":")
    basic = base64.b64encode(f"{admin_id}:{admin_secret}".encode()).decode()
    form = urllib.parse.urlencode(
        {"grant_type": "client_credentials", "scope": "identity:admin", "audience": "identity"}
    ).encode()
    return str(
        call(
            "POST",
            "/oauth/token",
            form,
            {
                "Authorization": f"Basic {basic}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )["access_token"]
    )


def main() -> None:
    missing = [
        name
        for name in CLIENTS
        if not kubectl("get", "secret", name, "--ignore-not-found", "-o", "name").strip()
    ]
    if not missing:
        return
    token = admin_token()
    secrets = []
    for name in missing:
        scopes, audiences = CLIENTS[name]
        client = call(
            "POST",
            "/v1/clients",
            json.dumps(
                {
                    "name": name,
                    "grant_types": ["client_credentials"],
                    "scopes": scopes,
                    "audiences": audiences,
                }
            ).encode(),
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        secrets.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": "lastro"},
                "stringData": {
                    "client-id": client["client_id"],
                    "client-secret": client["client_secret"],
                },
            }
        )
    yaml.safe_dump_all(secrets, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
