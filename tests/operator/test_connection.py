"""The operator's login without the kubernetes package: kubeconfigs as client-go reads them, exec plugins,
what is refused; and its client against a real HTTPS server with client certificates."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from rft_operator.connection import KubeconfigError, from_kubeconfig, load_connection
from rft_operator.kube import Kube, KubeError, cluster_problem


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kubeconfig(path: Path, cluster: dict, user: dict, namespace: str | None = "team-a") -> Path:
    context = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
        "clusters": [{"name": "c", "cluster": cluster}], "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": context}]}))
    return path


def test_token_certificate_data_and_files_relative_to_the_kubeconfig(tmp_path):
    (tmp_path / "ca.pem").write_text("CA")
    (tmp_path / "token").write_text("tok-from-file\n")
    conn = from_kubeconfig(kubeconfig(tmp_path / "kc", {"server": "https://k8s:6443/", "certificate-authority": "ca.pem"},
                                      {"tokenFile": "token"}))
    conn.refresh()
    assert conn.server == "https://k8s:6443" and conn.ca_data == "CA" and conn.namespace == "team-a"
    assert conn.headers() == {"Authorization": "Bearer tok-from-file"}
    conn = from_kubeconfig(kubeconfig(tmp_path / "kc2", {"server": "https://k8s", "certificate-authority-data": b64("CA2")},
                                      {"client-certificate-data": b64("CERT"), "client-key-data": b64("KEY")}))
    assert (conn.ca_data, conn.cert_data, conn.key_data) == ("CA2", "CERT", "KEY") and conn.headers() == {}
    conn = from_kubeconfig(kubeconfig(tmp_path / "kc3", {"server": "https://k8s", "insecure-skip-tls-verify": True},
                                      {"username": "admin", "password": "pw"}))
    assert conn.insecure and conn.headers() == {"Authorization": f"Basic {b64('admin:pw')}"}


def test_an_exec_plugin_is_run_with_the_exec_info_and_run_again_when_its_credential_expires(tmp_path):
    calls = tmp_path / "calls"
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, os, sys\n"
        f"calls = {str(calls)!r}\n"
        "n = (int(open(calls).read()) if os.path.exists(calls) else 0) + 1\n"
        "open(calls, 'w').write(str(n))\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "assert info['spec']['interactive'] is False and sys.argv[1] == 'get-token'\n"
        "print(json.dumps({'apiVersion': info['apiVersion'], 'kind': 'ExecCredential', 'status': {\n"
        "    'token': f'tok-{n}-{os.environ[\"PLUGIN_ENV\"]}', 'expirationTimestamp': '2000-01-01T00:00:00Z'}}))\n")
    conn = from_kubeconfig(kubeconfig(tmp_path / "kc", {"server": "https://k8s"}, {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
        "args": [str(plugin), "get-token"], "env": [{"name": "PLUGIN_ENV", "value": "x"}]}}))
    conn.refresh()
    assert conn.headers() == {"Authorization": "Bearer tok-1-x"}
    conn.refresh()  # expired (in 2000): run again
    assert conn.headers() == {"Authorization": "Bearer tok-2-x"}


@pytest.mark.parametrize("cluster, user, says", [
    ({"server": "https://k8s"}, {"auth-provider": {"name": "gcp"}}, "exec credential plugin"),
    ({"server": "https://k8s", "proxy-url": "http://proxy:3128"}, {"token": "t"}, "proxy-url"),
    ({"server": "https://k8s", "tls-server-name": "k8s.internal"}, {"token": "t"}, "tls-server-name"),
])
def test_what_the_client_cannot_honour_is_refused_with_what_to_do(tmp_path, cluster, user, says):
    with pytest.raises(KubeconfigError, match=says):
        from_kubeconfig(kubeconfig(tmp_path / "kc", cluster, user))


def test_no_kubeconfig_is_one_line_from_rft_operator(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeconfigError, match="no kubeconfig at"):
        load_connection()
    assert "no usable Kubernetes configuration" in cluster_problem()


@pytest.fixture()
def tls_server(tmp_path):
    """An HTTPS server that wants a client certificate signed by its CA, and records what it was sent."""
    subj = {"ca": "/CN=test-ca", "server": "/CN=localhost", "client": "/CN=rft-operator"}
    cnf = tmp_path / "openssl.cnf"
    cnf.write_text("[req]\ndistinguished_name=dn\n[dn]\n[v3]\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "ca.key"), "-out",
        str(tmp_path / "ca.crt"), "-subj", subj["ca"], "-days", "1")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / f"{name}.key"), "-out",
            str(tmp_path / f"{name}.csr"), "-subj", subj[name])
        run("x509", "-req", "-in", str(tmp_path / f"{name}.csr"), "-CA", str(tmp_path / "ca.crt"), "-CAkey",
            str(tmp_path / "ca.key"), "-CAcreateserial", "-out", str(tmp_path / f"{name}.crt"), "-days", "1",
            "-extfile", str(cnf), "-extensions", "v3")
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.connection.getpeercert()["subject"], json.loads(body)))
            reply = b'{"kind": "Pod"}'
            self.send_response(201)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.crt"))
    context.load_cert_chain(str(tmp_path / "server.crt"), str(tmp_path / "server.key"))
    context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", tmp_path, seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_client_keeps_one_connection_per_thread_and_presents_its_certificate(tls_server):
    from rft_operator import kube as k

    url, pki, seen = tls_server
    conn = from_kubeconfig(kubeconfig(pki / "kc", {"server": url, "certificate-authority-data": b64(
        (pki / "ca.crt").read_text())}, {"client-certificate-data": b64((pki / "client.crt").read_text()),
                                         "client-key-data": b64((pki / "client.key").read_text())}))
    client = Kube(conn)
    try:
        for i in range(3):
            assert client.create(k.PODS, "team-a", {"metadata": {"name": f"p{i}"}}) is True
        assert len(client._connections) == 1  # the same connection, kept alive
    finally:
        client.close()
    assert [s[0] for s in seen] == ["/api/v1/namespaces/team-a/pods"] * 3
    assert seen[0][1] == ((("commonName", "rft-operator"),),) and seen[2][2] == {"metadata": {"name": "p2"}}


def test_a_server_that_cannot_be_reached_is_a_kube_error_with_status_0(tmp_path):
    from rft_operator import kube as k

    conn = from_kubeconfig(kubeconfig(tmp_path / "kc", {"server": "http://127.0.0.1:9"}, {"token": "t"}))
    with pytest.raises(KubeError) as info:
        Kube(conn, timeout=2).get(k.CONFIGMAPS, "ns", "x")
    assert info.value.status == 0
