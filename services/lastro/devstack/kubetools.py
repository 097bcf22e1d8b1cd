"""The Kubernetes tools of the cluster path, built once and cached by version.

`lastro dev bootstrap --k8s` calls :func:`ensure_tools`. Nothing here downloads a
prebuilt binary: Helm is built with ``go install`` from the Go module proxy, the
control-plane binaries (kube-apiserver, kube-controller-manager, kube-scheduler) with
``go build`` of the wrapper module in ``devstack/kube/`` (it requires
``k8s.io/kubernetes`` and replaces its staging modules with their releases), kwok (fake
nodes) with ``go install``; etcd and promtool are Debian packages.

Each binary lands in the tools directory (``LASTRO_TOOLS_DIR``, default
``~/.cache/lastro/bin``) as ``<name>-<version>``, with a ``<name>`` symlink to it, so a
second run finds everything and takes a second; a version bump builds the new one next
to the old. Go builds run under ``nice -n 10`` (the machine is shared); a cold build
takes minutes (Helm about 5, kube-apiserver about 7, the rest about 4 more once those
are in the build cache), which is why `.ci/run` calls this before the tests, and tests
call it again (cached, a second) before they start, never inside a timed step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from lastro.core.config import Settings
from lastro.devstack.bootstrap import install
from lastro.devstack.processes import StartError

KUBERNETES_VERSION: Final = "v1.35.4"
HELM_VERSION: Final = "v3.22.0"
KWOK_VERSION: Final = "v0.8.0"
KUBE_MODULE: Final = Path(__file__).parent / "kube"

# (what, how to tell it is there, Debian package)
DEBIAN_TOOLS: Final[list[tuple[str, Callable[[], bool], str]]] = [
    ("etcd", lambda: shutil.which("etcd") is not None, "etcd-server"),
    ("promtool", lambda: shutil.which("promtool") is not None, "prometheus"),
]


class ToolBuildError(StartError):
    """A Go build the stack needs failed; the message carries the tail of its output
    (a StartError, so `lastro` reports it as one and exits 1)."""


@dataclass(frozen=True)
class GoTool:
    """A binary built from Go modules: ``go install package@version`` for a published
    command, or ``go build ./<name>`` inside the wrapper module when ``wrapper``."""

    name: str
    version: str
    package: str = ""
    wrapper: bool = False

    def cached(self, tools_dir: Path) -> Path:
        return tools_dir / f"{self.name}-{self.version}"

    @property
    def module(self) -> str:
        return self.package.split("/cmd/")[0]


HELM: Final = GoTool("helm", HELM_VERSION, "helm.sh/helm/v3/cmd/helm")
KUBE_APISERVER: Final = GoTool("kube-apiserver", KUBERNETES_VERSION, wrapper=True)
KUBE_CONTROLLER_MANAGER: Final = GoTool("kube-controller-manager", KUBERNETES_VERSION, wrapper=True)
KUBE_SCHEDULER: Final = GoTool("kube-scheduler", KUBERNETES_VERSION, wrapper=True)
KWOK: Final = GoTool("kwok", KWOK_VERSION, "sigs.k8s.io/kwok/cmd/kwok")

# What `--k8s` builds: Helm, the API server, and what gives it (fake) nodes.
GO_TOOLS: Final = (HELM, KUBE_APISERVER, KUBE_CONTROLLER_MANAGER, KUBE_SCHEDULER, KWOK)
# kwok's own "fast" stages (node and pod lifecycles), from its module, in start order.
KWOK_STAGES: Final = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)


def tool_path(settings: Settings, name: str) -> Path:
    """The stable path of a cached tool (the ``<name>`` symlink); Debian tools by PATH."""
    link = settings.tools_dir / name
    if link.exists():
        return link
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not built yet: run `lastro dev bootstrap --k8s`")
    return Path(found)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise ToolBuildError("the Go toolchain is needed to build the Kubernetes tools (no `go`)")
    return go


def _installed_version(binary: Path, module: str) -> str | None:
    """The version of ``module`` a Go binary was built from (``go version -m``)."""
    result = subprocess.run(  # noqa: S603
        [_go(), "version", "-m", str(binary)], check=False, capture_output=True, text=True
    )
    match = re.search(rf"^\s+mod\s+{re.escape(module)}\s+(\S+)", result.stdout, re.MULTILINE)
    return match.group(1) if match else None


def _reusable_gobin_build(tool: GoTool) -> Path | None:
    """A binary an earlier plain ``go install`` of the same version left in GOPATH/bin."""
    if tool.wrapper:
        return None
    gopath = subprocess.run(  # noqa: S603
        [_go(), "env", "GOPATH"], check=True, capture_output=True, text=True
    ).stdout.strip()
    candidate = Path(gopath) / "bin" / tool.name
    if candidate.is_file() and _installed_version(candidate, tool.module) == tool.version:
        return candidate
    return None


def _version_flags(tool: GoTool) -> str:
    """Stamp the release into a control-plane binary, as the upstream build does: without
    it the server reports v0.0.0-master and clients (Helm, kubectl) cannot parse that."""
    major, minor, _ = tool.version.removeprefix("v").split(".")
    package = "k8s.io/component-base/version"
    values = {"gitVersion": tool.version, "gitMajor": major, "gitMinor": minor}
    values["gitTreeState"] = "clean"
    return " ".join(f"-X {package}.{name}={value}" for name, value in values.items())


def _build(tool: GoTool, into: Path) -> None:
    env = {**os.environ, "GOFLAGS": "-buildvcs=false"}
    if tool.wrapper:
        argv = ["nice", "-n", "10", _go(), "build", "-trimpath", "-ldflags", _version_flags(tool)]
        argv += ["-o", str(into), f"./{tool.name}"]
        cwd: Path | None = KUBE_MODULE
    else:  # go install names the binary after the command: `into` is <GOBIN>/<name>
        env["GOBIN"] = str(into.parent)
        argv = ["nice", "-n", "10", _go(), "install", "-trimpath", f"{tool.package}@{tool.version}"]
        cwd = None
    result = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, cwd=cwd)  # noqa: S603
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip()[-3000:]
        raise ToolBuildError(f"building {tool.name} {tool.version} failed:\n{tail}")


def ensure_go_tool(tool: GoTool, tools_dir: Path, say: Callable[[str], None] = print) -> str:
    """Make ``<tools_dir>/<name>`` point at a build of ``tool``; returns what it did."""
    tools_dir.mkdir(parents=True, exist_ok=True)
    target = tool.cached(tools_dir)
    outcome = "cached"
    if not target.exists():
        reusable = _reusable_gobin_build(tool)
        with tempfile.TemporaryDirectory(dir=tools_dir, prefix=f".{tool.name}-") as scratch:
            partial = Path(scratch) / tool.name
            if reusable is not None:
                shutil.copy2(reusable, partial)
                outcome = f"reused {reusable}"
            else:
                say(f"bootstrap: building {tool.name} {tool.version} (minutes on a cold cache)")
                _build(tool, partial)
                outcome = "built"
            partial.rename(target)  # atomic: a half-written binary is never cached
    link = tools_dir / tool.name
    if not link.is_symlink() or os.readlink(link) != target.name:
        link.unlink(missing_ok=True)
        link.symlink_to(target.name)
    return outcome


def kwok_stages(tools_dir: Path) -> Path:
    """Where the stage file kwok runs with is cached (next to its binary)."""
    return tools_dir / f"kwok-{KWOK.version}-stages.yaml"


def ensure_kwok_stages(tools_dir: Path) -> str:
    """Cache kwok's upstream stages, read from its module (the Go module proxy)."""
    target = kwok_stages(tools_dir)
    if target.exists():
        return "cached"
    download = subprocess.run(  # noqa: S603
        [_go(), "mod", "download", "-json", f"{KWOK.module}@{KWOK.version}"],
        check=False,
        capture_output=True,
        text=True,
    )
    if download.returncode != 0:
        raise ToolBuildError(f"go mod download {KWOK.module}: {download.stdout}{download.stderr}")
    module = Path(json.loads(download.stdout)["Dir"])
    stages = [(module / stage).read_text() for stage in KWOK_STAGES]
    partial = target.with_suffix(".partial")
    partial.write_text("".join(f"---\n{stage}" for stage in stages))
    partial.rename(target)
    return "written"


def ensure_tools(settings: Settings, say: Callable[[str], None] = print) -> None:
    """Install etcd and promtool, build (or find cached) Helm, the control plane and kwok.

    Idempotent: everything is cached by version, so a second run takes a second.
    Raises ToolBuildError when a build fails.
    """
    install(DEBIAN_TOOLS, say)
    for tool in GO_TOOLS:
        outcome = ensure_go_tool(tool, settings.tools_dir, say)
        say(f"bootstrap: {tool.name} {tool.version}: {outcome}")
    say(f"bootstrap: kwok stages: {ensure_kwok_stages(settings.tools_dir)}")
