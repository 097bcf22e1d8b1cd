"""The Kubernetes part of the dev stack: etcd and a real kube-apiserver on loopback.

`lastro dev up --k8s` starts them under ``.dev/k8s/`` after the rest of the stack:
etcd (Debian's ``etcd-server``) on ``LASTRO_ETCD_PORT`` (12379) and kube-apiserver
(built by `lastro dev bootstrap --k8s`, see ``kubetools``) on
``LASTRO_KUBE_APISERVER_PORT`` (16443), serving HTTPS with a certificate from the dev CA,
authenticating bearer tokens from a token file and authorising with RBAC.

Two kubeconfigs are written next to them:

* ``.dev/k8s/admin.kubeconfig``: user ``lastro-admin`` in ``system:masters``, for tests,
  Helm and people;
* ``.dev/k8s/operator.kubeconfig``: user ``lastro-operator`` with no rights of its own:
  the operator gets exactly what the chart's ClusterRole grants once it is bound.

No kubelet runs: objects are stored and validated (schemas, CEL, RBAC, admission),
the controller manager and scheduler act on them, kwok's fake nodes report their Pods
Running (``kubenodes``), and controllers such as the operator reconcile them, but no
container starts.
"""

from __future__ import annotations

import secrets
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from lastro.core.config import Settings
from lastro.devstack.base import Component, https_ok, port_open
from lastro.devstack.ca import DevCA
from lastro.devstack.kubetools import KUBE_APISERVER
from lastro.devstack.processes import StartError, spawn, wait_until

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# The names the serving certificate carries: loopback, and what in-cluster clients use.
APISERVER_HOSTS = (
    "localhost",
    "127.0.0.1",
    "::1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "10.96.0.1",
)
# user -> groups of the static token file
USERS = {"lastro-admin": ("system:masters",), "lastro-operator": ("lastro:operators",)}


def k8s_dir(settings: Settings) -> Path:
    return settings.dev_dir / "k8s"


def kubeconfig_path(settings: Settings, user: str = "lastro-admin") -> Path:
    """The kubeconfig of ``user`` (``lastro-admin`` or ``lastro-operator``)."""
    return k8s_dir(settings) / f"{user.removeprefix('lastro-')}.kubeconfig"


def apiserver_url(settings: Settings) -> str:
    return f"https://{settings.host}:{settings.kube_apiserver_port}"


def kubernetes_started(settings: Settings) -> bool:
    """True once `lastro dev up --k8s` ran here: status and down then include it."""
    return k8s_dir(settings).is_dir()


def _private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)


def kubeconfig(server: str, ca_file: Path, user: str, token: str) -> dict[str, Any]:
    """A kubeconfig document for one user of the dev cluster."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "lastro-dev",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "lastro-dev", "user": user}}],
        "current-context": user,
    }


def token_file(tokens: dict[str, str]) -> str:
    """kube-apiserver's static token file: ``token,user,uid,"group1,group2"``."""
    return "".join(
        f'{tokens[user]},{user},{user},"{",".join(groups)}"\n' for user, groups in USERS.items()
    )


def _tokens(directory: Path) -> dict[str, str]:
    """One random bearer token per user, generated once and kept."""
    path = directory / "tokens.yaml"
    if path.exists():
        known: dict[str, str] = yaml.safe_load(path.read_text()) or {}
    else:
        known = {}
    if set(known) != set(USERS):
        known = {user: known.get(user) or secrets.token_urlsafe(32) for user in USERS}
        _private(path, yaml.safe_dump(known).encode())
    return known


def _service_account_key(directory: Path) -> tuple[Path, Path]:
    """The key pair kube-apiserver signs (and verifies) service account tokens with."""
    key_path, pub_path = directory / "sa.key", directory / "sa.pub"
    if not (key_path.exists() and pub_path.exists()):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        pub_path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return key_path, pub_path


class Etcd(Component):
    """etcd 3 from Debian, client and peer URLs on loopback only."""

    name = "etcd"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.dir = k8s_dir(settings) / "etcd"

    def address(self) -> str:
        return f"http://{self.settings.host}:{self.settings.etcd_port}"

    def healthy(self) -> bool:
        if not port_open(self.settings.host, self.settings.etcd_port):
            return False
        try:
            with urllib.request.urlopen(f"{self.address()}/health", timeout=2) as resp:  # noqa: S310
                return b'"true"' in resp.read()
        except OSError:
            return False

    def start(self) -> None:
        etcd = shutil.which("etcd")
        if etcd is None:
            raise StartError("etcd is not installed: run `lastro dev bootstrap --k8s`")
        s = self.settings
        self.dir.mkdir(parents=True, exist_ok=True)
        peer = f"http://{s.host}:{s.etcd_peer_port}"
        proc = spawn(
            [
                etcd,
                "--name=lastro-dev",
                f"--data-dir={self.dir / 'data'}",
                f"--listen-client-urls={self.address()}",
                f"--advertise-client-urls={self.address()}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=lastro-dev={peer}",
                "--initial-cluster-state=new",
                "--quota-backend-bytes=1073741824",
                "--log-level=warn",
            ],
            pid_file=self.pid_file,
            log_file=self.log,
        )
        wait_until(self.healthy, timeout=30, what="etcd", log=self.log, proc=proc)


class KubeAPIServer(Component):
    """kube-apiserver on loopback: HTTPS (dev CA), static tokens, RBAC, etcd above."""

    name = "kube-apiserver"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.dir = k8s_dir(settings) / "apiserver"

    def address(self) -> str:
        return apiserver_url(self.settings)

    def healthy(self) -> bool:
        return https_ok(self.settings, f"{self.address()}/readyz")

    def binary(self) -> Path:
        built = KUBE_APISERVER.cached(self.settings.tools_dir)
        if not built.exists():
            raise StartError("kube-apiserver is not built: run `lastro dev bootstrap --k8s`")
        return built

    def write_credentials(self) -> dict[str, str]:
        """The token file and both kubeconfigs (kept across restarts); returns the tokens."""
        s = self.settings
        directory = k8s_dir(s)
        tokens = _tokens(directory)
        _private(directory / "tokens.csv", token_file(tokens).encode())
        for user, token in tokens.items():
            document = kubeconfig(self.address(), s.ca_file.resolve(), user, token)
            _private(kubeconfig_path(s, user), yaml.safe_dump(document).encode())
        return tokens

    def start(self) -> None:
        s = self.settings
        binary = self.binary()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.write_credentials()
        issued = DevCA(s.dev_dir / "ca").issue("kube-apiserver", APISERVER_HOSTS)
        sa_key, sa_pub = _service_account_key(k8s_dir(s))
        proc = spawn(
            [
                str(binary),
                f"--etcd-servers=http://{s.host}:{s.etcd_port}",
                f"--bind-address={s.host}",
                f"--advertise-address={s.host}",
                f"--secure-port={s.kube_apiserver_port}",
                f"--tls-cert-file={issued.cert}",
                f"--tls-private-key-file={issued.key}",
                f"--cert-dir={self.dir}",
                f"--token-auth-file={k8s_dir(s) / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
                # Debian's etcd 3.4 predates the progress notifications the watch cache
                # needs for consistent lists (answers 504 "Too large resource version");
                # without the cache every read goes to etcd, which is plenty here.
                "--watch-cache=false",
                "--v=1",
            ],
            pid_file=self.pid_file,
            log_file=self.log,
        )
        wait_until(self.healthy, timeout=90, what="kube-apiserver", log=self.log, proc=proc)


def kubernetes_components(settings: Settings) -> list[Component]:
    """The Kubernetes part of the stack in start order: etcd, kube-apiserver, then
    the controller manager, the scheduler and kwok's fake nodes (``kubenodes``)."""
    from lastro.devstack.kubenodes import node_components

    return [Etcd(settings), KubeAPIServer(settings), *node_components(settings)]
