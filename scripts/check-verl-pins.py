#!/usr/bin/env python3
"""Check the GPU image's pins (docker/verl-requirements.txt) against each other's published metadata.

Cheap stand-in for resolving the whole CUDA stack (a multi-GB download): for every pinned wheel it reads only
its core metadata (PEP 658, `<wheel URL>.metadata` on the package index) and checks that each pin satisfies
what the other pins, and this project's `runtime`, `operator` and `verl` extras, require of it. Needs the
package index pip is configured with here (PIP_INDEX_URL, else `pip config`'s index-url, else pip's own
default); exits 1 listing every conflict.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def configured_index() -> str:
    """The simple index pip uses on this machine: PIP_INDEX_URL, pip's config files, or pip's default."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].split()[0]
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    found = None
    for line in listed.splitlines():  # in pip's load order, so the last one is the one pip uses
        key, _, value = line.partition("=")
        if key.strip().endswith(".index-url") and not key.strip().endswith("extra-index-url"):
            found = value.strip().strip("'\"").split()[0]
    if found:
        return found
    from pip._internal.models.index import PyPI  # pip's default index, not a copy of its address

    return PyPI.simple_url


INDEX = configured_index().rstrip("/")
# the image's Python (Ubuntu 24.04's python3) and platform
ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
       "platform_system": "Linux", "sys_platform": "linux", "platform_machine": "x86_64"}
SMALL_WHEEL = 50 * 1024 * 1024
TAGS = ("cp312-cp312-manylinux", "cp38-abi3-manylinux", "py3-none-any", "cp312-abi3-manylinux")


def metadata(name: str, version: str) -> list[Requirement]:
    """Requires-Dist of the wheel that an x86_64 Linux CPython 3.12 would install."""
    req = urllib.request.Request(f"{INDEX}/{canonicalize_name(name)}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
    prefix = f"{name.replace('-', '_')}-{version}-"
    wheels = [f for f in files if f["filename"].lower().startswith(prefix.lower()) and f["filename"].endswith(".whl")]
    wheel = next((w for tag in TAGS for w in wheels if tag in w["filename"]), None)
    if wheel is None:
        raise SystemExit(f"no Linux x86_64 wheel of {name}=={version} on {INDEX}")
    try:
        text = urllib.request.urlopen(wheel["url"] + ".metadata", timeout=60).read().decode()
    except urllib.error.HTTPError as exc:
        # not every index serves PEP 658 metadata: read it from the wheel itself while that is small
        if exc.code != 404 or (wheel.get("size") or 0) > SMALL_WHEEL:
            raise SystemExit(f"no metadata for {wheel['filename']} on {INDEX} ({exc})") from exc
        with zipfile.ZipFile(io.BytesIO(urllib.request.urlopen(wheel["url"], timeout=120).read())) as zf:
            text = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    return [Requirement(r) for r in Parser().parsestr(text).get_all("Requires-Dist") or []]


def applies(req: Requirement, extras: set[str]) -> bool:
    """Whether a requirement holds on the image's platform, with these extras of its package asked for."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**ENV, "extra": e}) for e in (extras | {""}))


def main() -> int:
    """Print the checks made and the conflicts found; 0 when there are none."""
    pins = [Requirement(line) for line in (ROOT / "docker" / "verl-requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    pinned = {canonicalize_name(p.name): (next(iter(p.specifier)).version, set(p.extras)) for p in pins}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wants: list[tuple[str, Requirement, set[str]]] = [
        ("rft-platform", Requirement(r), set()) for r in project["dependencies"]]
    for extra in ("runtime", "operator", "verl"):
        wants += [(f"rft-platform[{extra}]", Requirement(r), set()) for r in project["optional-dependencies"][extra]]
    for name, (version, extras) in pinned.items():
        wants += [(f"{name}=={version}", r, extras) for r in metadata(name, version)]
    conflicts, checked = [], []
    for who, req, extras in wants:
        pin = pinned.get(canonicalize_name(req.name))
        if pin is None or not applies(req, extras):
            continue
        checked.append(f"{who} -> {req}")
        if not req.specifier.contains(pin[0], prereleases=True):
            conflicts.append(f"{who} needs {req} but {req.name}=={pin[0]} is pinned")
    for line in checked:
        print("checked:", line)
    print(f"{len(checked)} requirements on the {len(pinned)} pins checked against {INDEX}")
    for line in conflicts:
        print("conflict:", line)
    return 1 if conflicts else 0


if __name__ == "__main__":
    sys.exit(main())
