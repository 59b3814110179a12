#!/usr/bin/env bash
# Installs the external tools the tests drive, if they are missing:
#   promtool  (Debian/Ubuntu package `prometheus`)              checks and unit-tests the alert rules
#   amtool    (Debian/Ubuntu package `prometheus-alertmanager`) checks the Alertmanager example
#   wrk       (Debian/Ubuntu package `wrk`)                     drives the HTTP load of `python -m bench`
#   chromium  (Debian package `chromium`)                       the real browser the console's tests drive
#   swaks     (Debian packages `swaks`, `libnet-ssleay-perl`)     a mailer sending through SMTP submission
#   postfix   (Debian packages `postfix`, `libsasl2-modules`)     relays through SMTP submission (SASL)
# When all are on PATH it does nothing and prints nothing. Otherwise it installs the packages with
# apt-get (as root, or through sudo), without recommends. Note: on a host running systemd, the
# packages also enable and start a Prometheus (:9090) and an Alertmanager (:9093) service; stop
# them with `systemctl disable --now prometheus prometheus-alertmanager` if you do not want them; and
# Postfix, unconfigured, is enabled too: the tests start a private instance of their own, so
# `systemctl disable --now postfix` loses them nothing.
set -euo pipefail

declare -A package_of=([promtool]=prometheus [amtool]=prometheus-alertmanager [wrk]=wrk [chromium]=chromium
    [swaks]="swaks libnet-ssleay-perl" [postfix]="postfix libsasl2-modules")
tools=(promtool amtool wrk chromium swaks postfix)
missing=()
for tool in "${tools[@]}"; do
    # shellcheck disable=SC2206  # a tool may need several packages, listed with spaces
    command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$tool" >/dev/null 2>&1 || missing+=(${package_of[$tool]})
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

give_up() {
    echo "install-tools: $1" >&2
    echo "install-tools: install the packages ${missing[*]} (apt-get install --no-install-recommends" \
        "${missing[*]}), or put promtool and amtool from https://prometheus.io/download/, wrk, chromium," \
        "swaks and postfix on PATH." >&2
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
# Postfix asks how to configure itself: not at all (the tests write their own configuration).
echo "postfix postfix/main_mailer_type select No configuration" | "${as_root[@]}" debconf-set-selections 2>/dev/null || true
apt_get=("${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0)
# The package lists may be missing or stale on a fresh machine: refresh them only if installing fails.
if ! "${apt_get[@]}" install --no-install-recommends "${missing[@]}" >/dev/null; then
    "${apt_get[@]}" update >/dev/null || give_up "apt-get update failed"
    "${apt_get[@]}" install --no-install-recommends "${missing[@]}" >/dev/null || give_up "apt-get install failed"
fi
for tool in "${tools[@]}"; do
    PATH="$PATH:/usr/sbin" command -v "$tool" >/dev/null 2>&1 || give_up "$tool is still not on PATH after installing"
done
