#!/usr/bin/env bash
# Set up bpfjit on a fresh Debian/Ubuntu machine: system packages (when missing), then a venv in .venv
# with the package and its test tools. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# libpcap: pcap_compile for expressions and bpf_filter as the test oracle; tcpdump: reference output.
ldconfig -p 2>/dev/null | grep -q 'libpcap\.so' || need_apt+=(libpcap0.8)
command -v tcpdump >/dev/null 2>&1 || [ -x /usr/bin/tcpdump ] || need_apt+=(tcpdump)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
# iproute2: the live-capture and kernel-oracle tests build their own network namespaces with `ip`.
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need_apt+=(iproute2)

if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bootstrap: installing ${need_apt[*]} with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.bpfjit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
