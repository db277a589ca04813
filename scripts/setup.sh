#!/usr/bin/env bash
# One-time set-up on a fresh Debian 12 / Ubuntu machine, as root: apt packages + .venv.
# Idempotent: installs only what is missing; `apt-get update` runs once, only if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  mininet openvswitch-switch iproute2 iptables nftables iperf3 tcpdump ethtool
  iputils-ping containernetworking-plugins procps util-linux psmisc conntrack
  python3-venv python3-yaml exabgp bird2 frr traceroute
  etcd-server etcd-client nginx-light busybox dnsutils curl wget openssl python3-cryptography
  graphviz
  wrk
  gcc libc6-dev  # builds knetlab/cni/agent_client.c (the agent planes' thin CNI plugin), knetlab/nodes/pause.c
  unbound dnsmasq-base dnsperf  # cluster DNS (knetlab runs unbound per DNS pod; docs/dns.md)
)
# Nice to have, not in every archive (Ubuntu names it linux-tools-*): without it the DNS
# bench skips its split of the server core's time (docs/dns.md).
OPTIONAL_PACKAGES=(linux-perf)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  # the package's own resolver service is not needed: each cluster DNS pod runs unbound itself
  if [[ " ${missing[*]} " == *" unbound "* ]] && command -v systemctl >/dev/null; then
    systemctl disable --now unbound 2>/dev/null || true
  fi
fi
for p in "${OPTIONAL_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$p" \
      || echo "setup: optional package $p is not available here; going on without it"
  fi
done

# Debian's python3 sees Debian's mininet module (system site packages).
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch .venv/.installed
fi
# knetlab's two C programs, built here, not committed, so that they match this machine:
# the thin CNI client (bin/calico, bin/ovs, bin/weave-net link to it) and a pod's pause.
for pair in knetlab/cni/agent_client.c:knetlab/cni/agent-client knetlab/nodes/pause.c:knetlab/nodes/pause; do
  src=${pair%%:*} bin=${pair#*:}
  if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ]; then
    cc -O2 -Wall -Wextra -Werror -o "$bin.tmp" "$src" && mv "$bin.tmp" "$bin"
  fi
done
chmod +x knetlab/cni/bin/*
echo "setup: ok ($(.venv/bin/knetlab --version))"
