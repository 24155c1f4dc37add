#!/usr/bin/env bash
# Installs what the browser tests need, once: Debian's chromium (no browser download: playwright-core drives the
# system one), playwright-core from npm into tests/browser/node_modules (git-ignored), and the newest ComfyUI
# frontend (comfyui-frontend-package, version in tests/browser/frontends.py) from PyPI into
# ~/.cache/sparseflow/frontend/ (never into the repository).
# Idempotent and quick when everything is there. Exits non-zero with the reason when a step
# fails (network, no apt/npm); dev.sh then reports that the browser tests will be skipped.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PY="${PYTHON:-python3}"
COMFYUI_PATH="${COMFYUI_PATH:-/opt/ComfyUI}"

fail() { echo "tests/browser/setup.sh: $*" >&2; exit 1; }

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  fail "node and npm are needed (Node.js >= 20) and were not found"
fi

if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM:-}" ]; then
  command -v apt-get >/dev/null || fail "chromium is missing and apt-get is not available to install it"
  echo "tests/browser/setup.sh: installing Debian's chromium"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/tmp/sparseflow_apt.log 2>&1 || fail "apt-get update failed (see /tmp/sparseflow_apt.log)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >>/tmp/sparseflow_apt.log 2>&1 \
    || fail "apt-get install chromium failed (see /tmp/sparseflow_apt.log)"
fi

want="$(node -p 'require("./package.json").dependencies["playwright-core"]')"
have="$(node -p 'try { require("./node_modules/playwright-core/package.json").version } catch { "" }')"
if [ "$have" != "$want" ]; then
  echo "tests/browser/setup.sh: installing playwright-core $want (npm)"
  npm ci --no-audit --no-fund --loglevel=error >/tmp/sparseflow_npm.log 2>&1 \
    || fail "npm ci failed (see /tmp/sparseflow_npm.log)"
fi

"$PY" frontends.py fetch || fail "could not install the newest ComfyUI frontend (see above)"

echo "tests/browser/setup.sh: chromium $(${CHROMIUM:-/usr/bin/chromium} --version 2>/dev/null | awk '{print $2}'), playwright-core $want, frontend $("$PY" -c 'from frontends import NEWEST_VERSION; print(NEWEST_VERSION)'): ready"
