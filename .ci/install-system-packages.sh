#!/usr/bin/env bash
# Install the Debian packages the test suite needs: haproxy (the local traffic router), chromium + chromium-driver
# (the HTML release report is tested in headless Chromium), prometheus-pushgateway (step metrics are pushed to it)
# and prometheus (the canary analysis' Prometheus query is tested against it), and bubblewrap (`llmrelease run
# --isolation bwrap` runs each pod in it), nginx-light, influxdb and busybox (under bwrap they stand in for the
# nginx and influxdb images' servers and the curlimages/curl image's busybox sh: workflows/runner/images.py).
# Idempotent and quiet: installs only what is missing; runs `apt-get update` only when an install is needed.
# Needs root (CI runs it as root); elsewhere it uses sudo when available.
set -euo pipefail

# Debian package name -> the command it provides (checked to decide whether to install).
declare -A PACKAGES=(
    [haproxy]=haproxy
    [chromium]=chromium
    [chromium-driver]=chromedriver
    [prometheus-pushgateway]=prometheus-pushgateway
    [prometheus]=prometheus
    [bubblewrap]=bwrap
    [nginx-light]=nginx
    [influxdb]=influxd
    [busybox]=busybox
)

# With arguments, only those packages (e.g. `install-system-packages.sh haproxy` for the demo).
wanted=("$@")
if [ "${#wanted[@]}" -eq 0 ]; then
    wanted=("${!PACKAGES[@]}")
fi

missing=()
for pkg in "${wanted[@]}"; do
    cmd="${PACKAGES[$pkg]}"
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/usr/bin/$cmd" ]; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-system-packages: need root to install ${missing[*]} (run as root or install sudo)" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# Wait for a concurrent apt/dpkg (unattended upgrades, another job) instead of failing on the lock.
APT=(env DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=300)
if [ -n "$SUDO" ]; then
    APT=("$SUDO" "${APT[@]}")
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { "${APT[@]}" update && "${APT[@]}" install -y --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install-system-packages: failed to install ${missing[*]}" >&2
    exit 1
fi
echo "install-system-packages: installed ${missing[*]}"
