#!/usr/bin/env bash
# Installs the Debian packages Bastion needs to build and test, only those missing.
# Idempotent: when everything is present it installs nothing and prints nothing.
set -euo pipefail
pkgs=(clang llvm libbpf-dev bpftool make python3-venv
      qemu-system-x86 busybox-static cpio iproute2 procps util-linux
      rsyslog logrotate systemd gcc auditd)
pkgs+=(podman runc e2fsprogs)   # issue 17: container tests (real runtime, offline --rootfs)
pkgs+=(tmux)   # s18-launder: the live test of a command typed into a clean tmux server
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # auditd is only bench/bench_side_by_side.py's comparison: it starts its own auditd
  # with a private configuration and stops it again.  A freshly installed auditd must
  # not stay running or enabled (Debian's postinst starts and enables it).
  if [[ " ${missing[*]} " == *" auditd "* ]]; then
    if [[ -d /run/systemd/system ]]; then
      systemctl disable --now auditd.service >/dev/null 2>&1
    else
      systemctl disable auditd.service >/dev/null 2>&1 || update-rc.d auditd disable >/dev/null
      if [[ -x /etc/init.d/auditd ]] && pgrep -x auditd >/dev/null; then /etc/init.d/auditd stop >/dev/null; fi
    fi
  fi
fi
# Fleet (docs/deploy.md): nats-server for the NATS tests. The Debian package enables and
# starts its own service; Bastion's tests run their own servers, so that one is disabled.
if ! dpkg-query -W -f='${Status}' nats-server 2>/dev/null | grep -q "install ok installed"; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nats-server >/dev/null
  if [ -d /run/systemd/system ]; then systemctl disable --now nats-server
  else systemctl disable nats-server; fi   # no systemd running: only the wants link
fi
