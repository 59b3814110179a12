#!/usr/bin/env bash
# Installs the external tools the tests drive, if they are missing:
#   promtool  (Debian/Ubuntu package `prometheus`)              checks and unit-tests the alert rules
#   amtool    (Debian/Ubuntu package `prometheus-alertmanager`) checks the Alertmanager example
#   wrk       (Debian/Ubuntu package `wrk`)                     drives the HTTP load of `python -m bench`
#   chromium  (Debian package `chromium`)                       the real browser the console's tests drive
# When all are on PATH it does nothing and prints nothing. Otherwise it installs the packages with
# apt-get (as root, or through sudo), without recommends. Note: on a host running systemd, the
# packages also enable and start a Prometheus (:9090) and an Alertmanager (:9093) service; stop
# them with `systemctl disable --now prometheus prometheus-alertmanager` if you do not want them.
set -euo pipefail

declare -A package_of=([promtool]=prometheus [amtool]=prometheus-alertmanager [wrk]=wrk [chromium]=chromium)
tools=(promtool amtool wrk chromium)
missing=()
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${package_of[$tool]}")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

give_up() {
    echo "install-tools: $1" >&2
    echo "install-tools: install the packages ${missing[*]} (apt-get install --no-install-recommends" \
        "${missing[*]}), or put promtool and amtool from https://prometheus.io/download/, wrk and chromium on PATH." >&2
    exit 1
}

command -v apt-get >/dev/null 2>&1 || give_up "no apt-get on this machine"
if [[ $(id -u) -eq 0 ]]; then
    as_root=(env)
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo env)
else
    give_up "not root and no sudo"
fi

echo "install-tools: installing ${missing[*]}" >&2
apt_get=("${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0)
# The package lists may be missing or stale on a fresh machine: refresh them only if installing fails.
if ! "${apt_get[@]}" install --no-install-recommends "${missing[@]}" >/dev/null; then
    "${apt_get[@]}" update >/dev/null || give_up "apt-get update failed"
    "${apt_get[@]}" install --no-install-recommends "${missing[@]}" >/dev/null || give_up "apt-get install failed"
fi
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || give_up "$tool is still not on PATH after installing"
done
