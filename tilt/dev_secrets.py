"""Print the Secrets `tilt up` needs, as YAML for `kubectl apply -f -`.

- ``lastro-tls``: one certificate from the dev CA (``.dev/ca``, the same CA as
  `lastro dev up`) naming every service and dev dependency at every in-cluster name,
  plus localhost for port-forwards; with ``ca.crt`` for the clients.
- ``lastro-database`` and ``lastro-vault``: a password and a root token generated once
  and kept under ``.dev/tilt`` so a re-run does not change them under running pods.

Dev only: production Secrets come from the platform's secret manager (runbook).
"""

from __future__ import annotations

import base64
import secrets
import sys
from pathlib import Path

import yaml

from lastro.core import registry
from lastro.devstack.ca import DevCA

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "lastro"
RELEASE = "lastro"
# Every process that serves HTTPS: the APIs, the fakes and the workers' metrics ports.
SERVICES = tuple(spec.name for spec in registry.SERVICES if spec.port is not None)
DEPENDENCIES = ("postgresql", "redis", "kafka", "openbao")


def names() -> tuple[str, ...]:
    hosts = ["localhost", "127.0.0.1"]
    for short in [f"{RELEASE}-{s}" for s in SERVICES] + list(DEPENDENCIES):
        hosts += [short, f"{short}.{NAMESPACE}", f"{short}.{NAMESPACE}.svc"]
        hosts.append(f"{short}.{NAMESPACE}.svc.cluster.local")
    return tuple(hosts)


def kept(path: Path, make: str) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(make)
    return path.read_text().strip()


def secret(name: str, data: dict[str, str], kind: str = "Opaque") -> dict[str, object]:
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": kind,
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/part-of": "lastro-dev"},
        },
        "data": encoded,
    }


def main() -> None:
    dev = ROOT / ".dev"
    ca = DevCA(dev / "ca")
    issued = ca.issue("tilt-cluster", names())
    documents = [
        secret(
            "lastro-tls",
            {
                "tls.crt": issued.cert.read_text(),
                "tls.key": issued.key.read_text(),
                "ca.crt": ca.cert_path.read_text(),
            },
            "kubernetes.io/tls",
        ),
        secret(
            "lastro-database",
            {"password": kept(dev / "tilt" / "pg_password", secrets.token_urlsafe(24))},
        ),
        secret(
            "lastro-vault",
            {"token": kept(dev / "tilt" / "vault_token", "dev-" + secrets.token_urlsafe(24))},
        ),
    ]
    yaml.safe_dump_all(documents, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
