"""Where the API server is and how to authenticate: the pod's service account, else the kubeconfig.

Read with the standard library only, so the operator never imports the `kubernetes` package (about 30 MB of
generated models it has no use for). Supported, as client-go reads them: in-cluster service-account tokens
(re-read as the kubelet rotates them), and kubeconfig clusters (server, certificate-authority(-data),
insecure-skip-tls-verify) with users by token, tokenFile, client certificate (-data or
file), basic auth, or an `exec` credential plugin (client.authentication.k8s.io v1/v1beta1; EKS, GKE, AKS,
OIDC logins). What it cannot honour is refused with what to do, never ignored: the legacy `auth-provider`
entries, and a cluster's `proxy-url` or `tls-server-name`.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# client-go re-reads a projected token at most this often; the kubelet refreshes it well before expiry
TOKEN_FILE_REFRESH_SECONDS = 60.0
EXEC_INFO_API = "client.authentication.k8s.io/v1"


class KubeconfigError(Exception):
    """The kubeconfig or the pod's service account cannot be used; the message says what to fix."""


@dataclass
class ExecPlugin:
    """A kubeconfig user's `exec` credential plugin (runs again when its credential expires or is refused)."""

    command: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    api_version: str = EXEC_INFO_API
    base_dir: str = "."

    def run(self, server: str) -> dict[str, Any]:
        """The plugin's ExecCredential status: token, or clientCertificateData/clientKeyData, and expiry."""
        info = {"apiVersion": self.api_version, "kind": "ExecCredential",
                "spec": {"interactive": False, "cluster": {"server": server}}}
        env = {**os.environ, **self.env, "KUBERNETES_EXEC_INFO": json.dumps(info)}
        command = self.command
        if os.sep in command and not os.path.isabs(command):
            command = os.path.join(self.base_dir, command)  # relative to the kubeconfig, as client-go does
        try:
            proc = subprocess.run([command, *self.args], env=env, capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KubeconfigError(f"the kubeconfig's exec credential plugin {self.command!r} did not run: "
                                  f"{exc}") from None
        if proc.returncode != 0:
            raise KubeconfigError(f"the kubeconfig's exec credential plugin {self.command!r} exited "
                                   f"{proc.returncode}: {proc.stderr.strip()[-300:]}")
        try:
            status = json.loads(proc.stdout)["status"]
        except (ValueError, KeyError, TypeError):
            raise KubeconfigError(f"the exec credential plugin {self.command!r} printed no ExecCredential "
                                   "with a status") from None
        return status


@dataclass
class Connection:
    """One API server and the credentials to use with it."""

    server: str
    ca_data: str | None = None  # PEM
    insecure: bool = False
    token: str | None = None
    token_file: str | None = None
    cert_data: str | None = None  # PEM
    key_data: str | None = None  # PEM
    username: str | None = None
    password: str | None = None
    exec_plugin: ExecPlugin | None = None
    namespace: str | None = None
    _token_read: float = field(default=0.0, repr=False)
    _expires: float | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def refresh(self, force: bool = False) -> None:
        """Re-read a rotated token file; re-run the exec plugin when its credential expired (or `force`)."""
        with self._lock:
            now = time.time()
            if self.token_file and (force or now - self._token_read > TOKEN_FILE_REFRESH_SECONDS):
                try:
                    self.token = Path(self.token_file).read_text().strip()
                except OSError as exc:
                    raise KubeconfigError(f"cannot read the token file {self.token_file}: {exc}") from None
                self._token_read = now
            if self.exec_plugin and (force or self.token is None and self.cert_data is None
                                     or self._expires is not None and now >= self._expires - 10):
                status = self.exec_plugin.run(self.server)
                self.token = status.get("token")
                self.cert_data = status.get("clientCertificateData") or self.cert_data
                self.key_data = status.get("clientKeyData") or self.key_data
                stamp = status.get("expirationTimestamp")
                self._expires = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None

    @property
    def expiration(self) -> float | None:
        """When the exec plugin's credential expires (None: it does not say, or there is none)."""
        return self._expires

    def headers(self) -> dict[str, str]:
        """The Authorization header, if the credential is a token or a password."""
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.username is not None and self.password is not None:
            pair = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return {"Authorization": f"Basic {pair}"}
        return {}

    def ssl_context(self) -> ssl.SSLContext:
        """TLS for this server: its CA (or none with insecure-skip-tls-verify) and the client certificate."""
        context = ssl.create_default_context(cadata=self.ca_data) if self.ca_data else ssl.create_default_context()
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_data and self.key_data:
            # ssl loads a certificate chain from files only: a private file that lives as long as the call
            with tempfile.TemporaryDirectory(prefix="rft-operator-") as tmp:
                cert, key = Path(tmp) / "client.crt", Path(tmp) / "client.key"
                for path, data in ((cert, self.cert_data), (key, self.key_data)):
                    path.touch(mode=0o600)
                    path.write_text(data)
                context.load_cert_chain(str(cert), str(key))
        return context


def _b64(text: str, what: str) -> str:
    try:
        return base64.b64decode(text).decode()
    except (ValueError, UnicodeDecodeError):
        raise KubeconfigError(f"the kubeconfig's {what} is not base64-encoded PEM") from None


def _read(path: str, base: Path, what: str) -> str:
    full = Path(path) if os.path.isabs(path) else base / path
    try:
        return full.read_text()
    except OSError as exc:
        raise KubeconfigError(f"the kubeconfig's {what} {full} cannot be read: {exc}") from None


def _named(entries: Any, name: str, kind: str, source: Path) -> dict[str, Any]:
    for entry in entries or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry.get(kind) or {}
    raise KubeconfigError(f"{source}: no {kind} named {name!r}")


def from_kubeconfig(path: Path, context: str | None = None) -> Connection:
    """The connection the kubeconfig's current (or named) context describes."""
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise KubeconfigError(f"cannot read the kubeconfig {path}: {exc}") from None
    name = context or doc.get("current-context")
    if not name:
        raise KubeconfigError(f"{path} has no current-context; set one with kubectl config use-context")
    ctx = _named(doc.get("contexts"), name, "context", path)
    cluster = _named(doc.get("clusters"), ctx.get("cluster", ""), "cluster", path)
    user = _named(doc.get("users"), ctx.get("user", ""), "user", path) if ctx.get("user") else {}
    base = path.resolve().parent
    server = cluster.get("server")
    if not server:
        raise KubeconfigError(f"{path}: cluster {ctx.get('cluster')!r} has no server")
    for unsupported in ("proxy-url", "tls-server-name"):
        if cluster.get(unsupported):
            raise KubeconfigError(f"{path}: cluster {ctx.get('cluster')!r} sets {unsupported}, which rft-operator's "
                                  "client does not support; run the operator in the cluster (its service account "
                                  "needs neither) or use a kubeconfig without it")
    conn = Connection(server=server.rstrip("/"), namespace=ctx.get("namespace"),
                      insecure=bool(cluster.get("insecure-skip-tls-verify")))
    if cluster.get("certificate-authority-data"):
        conn.ca_data = _b64(cluster["certificate-authority-data"], "certificate-authority-data")
    elif cluster.get("certificate-authority"):
        conn.ca_data = _read(cluster["certificate-authority"], base, "certificate-authority")
    if user.get("auth-provider"):
        provider = (user["auth-provider"] or {}).get("name", "?")
        raise KubeconfigError(f"{path}: user {ctx.get('user')!r} uses the auth-provider {provider!r}, which "
                               "Kubernetes removed; use its exec credential plugin (e.g. gke-gcloud-auth-plugin, "
                               "kubelogin) as kubectl does")
    if user.get("client-certificate-data"):
        conn.cert_data = _b64(user["client-certificate-data"], "client-certificate-data")
    elif user.get("client-certificate"):
        conn.cert_data = _read(user["client-certificate"], base, "client-certificate")
    if user.get("client-key-data"):
        conn.key_data = _b64(user["client-key-data"], "client-key-data")
    elif user.get("client-key"):
        conn.key_data = _read(user["client-key"], base, "client-key")
    conn.token = user.get("token") or None
    if user.get("tokenFile"):
        conn.token_file = str(base / user["tokenFile"]) if not os.path.isabs(user["tokenFile"]) else user["tokenFile"]
    conn.username, conn.password = user.get("username"), user.get("password")
    if user.get("exec"):
        spec = user["exec"]
        conn.exec_plugin = ExecPlugin(command=spec.get("command", ""), args=list(spec.get("args") or []),
                                      env={e["name"]: e["value"] for e in spec.get("env") or []},
                                      api_version=spec.get("apiVersion") or EXEC_INFO_API, base_dir=str(base))
    return conn


def in_cluster() -> Connection:
    """The pod's own service account (KUBERNETES_SERVICE_HOST and the mounted token)."""
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:
        host = f"[{host}]"  # IPv6
    namespace = SERVICE_ACCOUNT / "namespace"
    return Connection(server=f"https://{host}:{port}", ca_data=(SERVICE_ACCOUNT / "ca.crt").read_text(),
                      token_file=str(SERVICE_ACCOUNT / "token"),
                      namespace=namespace.read_text().strip() if namespace.exists() else None)


def load_connection() -> Connection:
    """In a pod: its service account. Elsewhere: the first file KUBECONFIG names, or ~/.kube/config.

    The operator's own client and kopf's login both use this, so they always talk to the same server with
    the same credentials.
    """
    if os.environ.get("KUBERNETES_SERVICE_HOST") and (SERVICE_ACCOUNT / "token").exists():
        conn = in_cluster()
    else:
        path = (os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")
        if not os.path.exists(path):
            raise KubeconfigError(f"no kubeconfig at {path} and not in a pod; set KUBECONFIG")
        conn = from_kubeconfig(Path(path))
    conn.refresh()
    return conn
