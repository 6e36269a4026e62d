"""kmock (an emulated Kubernetes API server) with a thin HTTP gateway in front, so that a real helm can talk to it.

The gateway only bridges what kmock 0.8 lacks and helm needs; it never answers for the server:
- kmock names the core group version "/v1" in `/api/v1` discovery; client-go then finds no core kinds.
- helm stores releases as Secrets sent in protobuf, which kmock cannot read: the gateway decodes that one
  message type (a Secret) into JSON.
- kmock answers PUT with 404; helm updates its release Secret with PUT: the gateway sends the same object as a
  merge patch.
"""

from __future__ import annotations

import base64
import http.server
import json
import socketserver
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# one emulator setup for both suites: the operator tests' harness (its module name is unique, so the two
# test folders on sys.path cannot shadow each other)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
from kmock_harness import ApiServer  # noqa: E402


class EmulatedCluster:
    """The operator tests' kmock ApiServer, reached through the gateway at `.url` (kmock itself: `.kmock_url`)."""

    def __init__(self) -> None:
        self.kmock_url = ""
        self.url = ""
        self._api = ApiServer()
        self._gateway: socketserver.TCPServer | None = None

    def start(self) -> EmulatedCluster:
        """Start kmock and the gateway; returns once both listen."""
        self.kmock_url = self._api.start().url
        self._gateway = _ThreadingServer(("127.0.0.1", 0), _gateway_handler(self.kmock_url))
        threading.Thread(target=self._gateway.serve_forever, name="kmock-gateway", daemon=True).start()
        self.url = f"http://127.0.0.1:{self._gateway.server_address[1]}"
        return self

    def stop(self) -> None:
        """Stop the gateway and the emulator."""
        if self._gateway is not None:
            self._gateway.shutdown()
            self._gateway.server_close()
        self._api.stop()

    def get(self, path: str) -> dict[str, Any] | None:
        """GET an object straight from kmock (None when it does not exist)."""
        try:
            with urllib.request.urlopen(self.kmock_url + path, timeout=10) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def _gateway_handler(upstream: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            method, content_type = self.command, self.headers.get("Content-Type", "application/json")
            if body and "protobuf" in content_type:
                body, content_type = json.dumps(decode_secret(body)).encode(), "application/json"
            if method == "PUT":
                method, content_type = "PATCH", "application/merge-patch+json"
            request = urllib.request.Request(upstream + self.path, data=body, method=method)
            request.add_header("Accept", "application/json")
            if body:
                request.add_header("Content-Type", content_type)
            try:
                with urllib.request.urlopen(request, timeout=30) as resp:
                    status, data = resp.status, resp.read()
            except urllib.error.HTTPError as err:
                status, data = err.code, err.read()
            if self.path.split("?")[0] == "/api/v1":
                data = data.replace(b'"groupVersion": "/v1"', b'"groupVersion": "v1"')
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, Any]]:
    """Protobuf wire format -> (field number, int or bytes), in order."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = buf[i:i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, value))
    return out


def _string_map(entries: list[bytes]) -> dict[str, bytes]:
    out = {}
    for entry in entries:
        kv = dict(_fields(entry))
        out[kv.get(1, b"").decode()] = kv.get(2, b"")
    return out


def decode_secret(body: bytes) -> dict[str, Any]:
    """A core/v1 Secret in Kubernetes' protobuf envelope -> its JSON form (the fields helm's storage sets)."""
    if body[:4] != b"k8s\x00":
        raise ValueError("not a Kubernetes protobuf message")
    raw = next(value for number, value in _fields(body[4:]) if number == 2)
    meta: dict[str, Any] = {}
    secret: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret"}
    labels, annotations, data = [], [], []
    for number, value in _fields(raw):
        if number == 1:  # ObjectMeta
            for field, item in _fields(value):
                if field in (1, 3, 6):  # name, namespace, resourceVersion
                    meta[{1: "name", 3: "namespace", 6: "resourceVersion"}[field]] = item.decode()
                elif field == 11:
                    labels.append(item)
                elif field == 12:
                    annotations.append(item)
        elif number == 2:
            data.append(value)
        elif number == 3:
            secret["type"] = value.decode()
    if labels:
        meta["labels"] = {k: v.decode() for k, v in _string_map(labels).items()}
    if annotations:
        meta["annotations"] = {k: v.decode() for k, v in _string_map(annotations).items()}
    secret["metadata"] = meta
    secret["data"] = {k: base64.b64encode(v).decode() for k, v in _string_map(data).items()}
    return secret
