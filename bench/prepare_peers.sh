#!/usr/bin/env bash
# Download the peer attention implementations that bench/peers.py times, from PyPI only, into the
# git-ignored folder .peers/ (or $SPARSEFLOW_PEERS), and strip what the GPU bench does not need.
# Their code is for measuring only: it is never committed (.git/info/exclude holds /.peers/).
#
#   bench/prepare_peers.sh            # then: run(..., carry=[".peers"]) on the GPU machine
#
# Result (about 43 MB, under the 64 MiB carry limit):
#   .peers/site/sageattention/                 sageattention 1.0.6 wheel (pure Triton), unpacked
#   .peers/site/comfy_kitchen/                 comfy-kitchen wheel (cp312 abi3, x86_64), unpacked,
#                                              ROCm/HIP .so removed (158 MB); CUDA _C.abi3.so kept
#   .peers/fastvideo_kernel/triton_kernels/    sla_triton.py, block_sparse_attn_triton.py, index.py
#                                              from the fastvideo-kernel sdist (its compiled extension
#                                              is not used), plus the sdist's LICENSE
#   .peers/VERSIONS                            what was downloaded, with sha256 of each archive
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="${SPARSEFLOW_PEERS:-$REPO/.peers}"
SAGE_VERSION="${SAGE_VERSION:-1.0.6}"
CK_VERSION="${CK_VERSION:-0.2.40}"
FVK_VERSION="${FVK_VERSION:-0.3.5}"
PY="${PYTHON:-python3}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "prepare_peers: into $PEERS"
rm -rf "$PEERS"
mkdir -p "$PEERS/site" "$PEERS/fastvideo_kernel/triton_kernels"

# -- SageAttention 1.0.6: pure-Python/Triton wheel --------------------------------------------------
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$tmp/sage" "sageattention==$SAGE_VERSION"

# -- comfy-kitchen: the GPU machine runs CPython 3.12 on x86_64, so ask for that wheel explicitly ------
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$tmp/ck" \
    --python-version 3.12 --implementation cp --abi abi3 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    "comfy-kitchen==$CK_VERSION"

# -- fastvideo-kernel sdist ---------------------------------------------------------------------------
# `pip download --no-binary :all:` must build the sdist's metadata, which needs CMake, a CUDA toolchain
# and torch==2.12 as build requirements. So the sdist is fetched from PyPI's simple index (PEP 691 JSON,
# the API pip itself reads) and checked against the sha256 that the index publishes.
"$PY" - "$FVK_VERSION" "$tmp/fvk.tar.gz" <<'EOF'
import hashlib, json, sys, urllib.request
version, dest = sys.argv[1], sys.argv[2]
req = urllib.request.Request("https://pypi.org/simple/fastvideo-kernel/",
                             headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
name = f"fastvideo_kernel-{version}.tar.gz"
entry = next((f for f in files if f["filename"] == name), None)
if entry is None:
    sys.exit(f"prepare_peers: {name} not on PyPI")
data = urllib.request.urlopen(entry["url"], timeout=300).read()
digest = hashlib.sha256(data).hexdigest()
if digest != entry["hashes"]["sha256"]:
    sys.exit(f"prepare_peers: sha256 mismatch for {name}")
open(dest, "wb").write(data)
print(f"prepare_peers: {name} sha256 {digest}")
EOF

# -- unpack and strip -------------------------------------------------------------------------------
"$PY" -m zipfile -e "$tmp"/sage/sageattention-*.whl "$PEERS/site"
"$PY" -m zipfile -e "$tmp"/ck/comfy_kitchen-*.whl "$PEERS/site"
rm -f "$PEERS"/site/comfy_kitchen/backends/hip/*.so      # ROCm build, 158 MB, never loaded on CUDA

mkdir -p "$tmp/fvk"
tar -xzf "$tmp/fvk.tar.gz" -C "$tmp/fvk"
src="$tmp/fvk/fastvideo_kernel-$FVK_VERSION"
for f in sla_triton.py block_sparse_attn_triton.py index.py; do
    cp "$src/python/fastvideo_kernel/triton_kernels/$f" "$PEERS/fastvideo_kernel/triton_kernels/$f"
done
cp "$src/LICENSE" "$PEERS/fastvideo_kernel/LICENSE"

{
    echo "sageattention $SAGE_VERSION $(sha256sum "$tmp"/sage/*.whl | cut -d' ' -f1)"
    echo "comfy-kitchen $CK_VERSION $(sha256sum "$tmp"/ck/*.whl | cut -d' ' -f1)"
    echo "fastvideo-kernel $FVK_VERSION $(sha256sum "$tmp/fvk.tar.gz" | cut -d' ' -f1)"
} > "$PEERS/VERSIONS"

if ! git -C "$REPO" check-ignore -q "$PEERS" 2>/dev/null; then
    echo "prepare_peers: warning: $PEERS is not git-ignored; add '/.peers/' to .git/info/exclude" >&2
fi
echo "prepare_peers: done, $(du -sh "$PEERS" | cut -f1) in $PEERS"
