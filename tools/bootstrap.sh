#!/usr/bin/env bash
# Set up bpfjit on a fresh Debian/Ubuntu machine: system packages (when missing), then a venv with the
# package and its test tools. Idempotent: a second run only checks.
#
#   bash tools/bootstrap.sh                    # python3 -> .venv
#   bash tools/bootstrap.sh --python python3.12   # a name on PATH or a path -> .venvs/py3.12
set -euo pipefail
cd "$(dirname "$0")/.."

python=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python) [ $# -ge 2 ] || { echo "bootstrap: --python needs an interpreter" >&2; exit 2; }
              python="$2"; shift 2 ;;
    --python=*) python="${1#--python=}"; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "bootstrap: unknown argument $1 (usage: bootstrap.sh [--python INTERPRETER])" >&2; exit 2 ;;
  esac
done

need_apt=()
# libpcap: pcap_compile for expressions and bpf_filter as the test oracle; tcpdump: reference output.
ldconfig -p 2>/dev/null | grep 'libpcap\.so' >/dev/null || need_apt+=(libpcap0.8)  # no grep -q: pipefail + SIGPIPE
command -v tcpdump >/dev/null 2>&1 || [ -x /usr/bin/tcpdump ] || need_apt+=(tcpdump)
# The system python3's venv module (Debian splits ensurepip out); a --python interpreter brings its own.
if [ -z "$python" ] || [ "$(command -v "$python" 2>/dev/null || true)" = "$(command -v python3 2>/dev/null || true)" ]; then
  python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
fi
# iproute2: the live-capture and kernel-oracle tests build their own network namespaces with `ip`.
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need_apt+=(iproute2)
# python3-seccomp: libseccomp's own binding, a generator of realistic seccomp filters for the tests
# (Debian's module is built for Debian's Python 3.11; bpfjit.seccomp loads it through a path entry).
dpkg -s python3-seccomp >/dev/null 2>&1 || need_apt+=(python3-seccomp)
# linux-libc-dev: the kernel's unistd headers, where bpfjit.syscalls reads the syscall name tables.
[ -f /usr/include/asm-generic/unistd.h ] || need_apt+=(linux-libc-dev)

if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bootstrap: installing ${need_apt[*]} with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ -z "$python" ]; then
  base=python3
  venv=.venv
else
  # Resolve names and pyenv shims to the real interpreter: a shim for a version that is not pyenv's
  # current one fails, and a venv must point at the interpreter itself, not at a shim.
  base=$("$python" -c 'import sys; print(sys.executable)' 2>/dev/null || true)
  if [ -z "$base" ] && [[ "$python" =~ ^python(3\.[0-9]+)$ ]]; then  # pyenv's, when its shim refuses
    for candidate in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"${BASH_REMATCH[1]}".*/bin/"$python" 2>/dev/null | sort -rV); do
      base=$("$candidate" -c 'import sys; print(sys.executable)' 2>/dev/null || true)
      [ -z "$base" ] || break
    done
  fi
  if [ -z "$base" ]; then
    echo "bootstrap: $python does not run" >&2
    exit 1
  fi
  version=$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  venv=.venvs/py$version
fi
"$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
  echo "bootstrap: $("$base" --version 2>&1) is older than bpfjit's requires-python (>=3.10)" >&2
  exit 1
}
want=$("$base" -c 'import sys; print(sys.version.split()[0])')

# (Re)create the venv when it is missing, broken (its interpreter gone) or of another Python.
have=$("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || true)
if [ "$have" != "$want" ] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  [ -z "$have" ] || echo "bootstrap: recreating $venv (Python $have -> $want)" >&2
  rm -rf "$venv"
  if ! "$base" -m venv "$venv"; then
    echo "bootstrap: $base could not make a venv (ensurepip missing? on Debian: apt-get install python3-venv)" >&2
    rm -rf "$venv"
    exit 1
  fi
fi
stamp=$venv/.bpfjit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$venv/bin/python" -m pip install -q -e '.[test]'
  touch "$stamp"
fi
