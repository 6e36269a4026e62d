"""Packages come from where the machine's own clients are configured to fetch them: the repository names no
package registry (pip's index, npm's registry) in its code, docs, Dockerfiles, scripts or CI files."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from chartkit import REPO

# a URL whose host is a package index or registry (PyPI and its file host, PyTorch's wheel index, npm, yarn,
# the distributions' package archives); the project's own image registry (where its images are pushed) is not
# one of these
REGISTRY_URL = re.compile(r"https?://[^/\s\"'`]*(pypi|pythonhosted|pytorch|npmjs|yarnpkg|debian\.org|ubuntu\.com)",
                          re.IGNORECASE)


def _tracked_files() -> list[str]:
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, timeout=60)
    if proc.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout (CI's clone is)")
    return [name for name in proc.stdout.decode().split("\0") if name]


def test_no_file_names_a_package_registry_address():
    found = []
    for name in _tracked_files():
        path = REPO / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if REGISTRY_URL.search(line):
                found.append(f"{name}:{number}: {line.strip()[:160]}")
    assert not found, "package registry addresses (use the clients' configuration instead):\n" + "\n".join(found)


class _Registry(BaseHTTPRequestHandler):
    """An npm registry that has nothing: it records what it was asked for and answers 404."""

    asked: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        self.asked.append(self.path)
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error":"not found"}')

    def log_message(self, *args) -> None:
        pass


@pytest.mark.skipif(not any(os.access(os.path.join(d, "npm"), os.X_OK) for d in os.environ["PATH"].split(os.pathsep)),
                    reason="npm is not installed here (.ci/run's machines have it)")
def test_install_helm_fetches_from_the_registry_npm_is_configured_with(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    registry = f"http://127.0.0.1:{server.server_address[1]}/"
    (tmp_path / "npmrc").write_text(f"registry={registry}\nfetch-retries=0\n")
    env = {**os.environ, "NPM_CONFIG_USERCONFIG": str(tmp_path / "npmrc"), "HELM_INSTALL_DIR": str(tmp_path / "bin"),
           "npm_config_cache": str(tmp_path / "npm-cache")}
    try:
        proc = subprocess.run(["bash", str(REPO / "scripts" / "install-helm.sh")], env=env, capture_output=True,
                              text=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 1
    assert any("lambda-layer-kubectl" in path for path in _Registry.asked), _Registry.asked
    assert f"npm's registry is {registry}" in proc.stderr, proc.stderr
    assert not (tmp_path / "bin" / "helm").exists()
