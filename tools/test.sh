#!/usr/bin/env bash
# The test suite on every supported Python (3.10-3.13), then the semantic and JIT tests once more with
# filters called through ctypes (BPFJIT_CALL_PATH=ctypes), and a summary. Exits non-zero if any run
# failed. Runs one after the other: the kernel and network-namespace tests must not overlap.
#
#   bash tools/test.sh                   # every supported Python found (what CI runs, after bootstrap.sh)
#   bash tools/test.sh 3.12 3.13         # only these
#   bash tools/test.sh -- -x -k batch    # arguments after -- go to every pytest run
#
# An interpreter is `python3.X` on PATH or ~/.pyenv/versions/3.X.*/bin/python3.X ($PYENV_ROOT too).
# Locally a missing one is skipped with a message; under CI=true it is a failure. Each gets a venv
# from tools/bootstrap.sh: .venv for the default python3 (which runs first), .venvs/py3.X for the others.
# ruff and mypy (tests/test_lint.py) and the kernel-oracle tests (ORACLE_TESTS) run with the first
# Python only; the ctypes pass runs with it too.
set -uo pipefail
cd "$(dirname "$0")/.."

SUPPORTED=(3.10 3.11 3.12 3.13)
FALLBACK_TESTS=(tests/test_semantics.py tests/test_jit.py tests/test_memory_safety.py)
# The kernel as an oracle (its verdicts on programs and frames, through netns, veth and tcpdump):
# what the kernel answers does not depend on the Python asking, and these take ~3 minutes, so they
# run with the first Python only. Capture, ring and seccomp tests (ctypes and mmap code that does
# depend on the Python) run on every one.
ORACLE_TESTS=(tests/test_linux_kernel.py tests/test_kernel_oracle.py tests/test_fanout.py tests/test_capture_linux.py)

versions=()
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; pytest_args=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    3.*) versions+=("$1"); shift ;;
    *) echo "test.sh: unknown argument $1 (usage: test.sh [3.X ...] [-- PYTEST_ARGS])" >&2; exit 2 ;;
  esac
done
[ ${#versions[@]} -gt 0 ] || versions=("${SUPPORTED[@]}")

in_ci=false
[ "${CI:-}" = "true" ] && in_ci=true

# The interpreter of Python $1, or nothing. A pyenv shim for a version that is not pyenv's current
# one is on PATH but fails, so every candidate is run and must report the right version.
find_python() {
  local want=$1 candidate
  local pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
  local candidates=()
  candidate=$(command -v "python$want" 2>/dev/null) && candidates+=("$candidate")
  while IFS= read -r candidate; do
    candidates+=("$candidate")
  done < <(ls -d "$pyenv_root"/versions/"$want".*/bin/"python$want" 2>/dev/null | sort -rV)
  for candidate in "${candidates[@]}"; do
    if [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$want" ]; then
      "$candidate" -c 'import sys; print(sys.executable)'
      return 0
    fi
  done
  return 1
}

version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

rows=()     # "python|result|seconds"
failed=0

record() {
  rows+=("$1|$2|$3")
  case "$2" in passed|skipped*) ;; *) failed=1 ;; esac
}

# The default python3's venv (.venv, as the README sets up) runs first: with ruff and mypy, which run
# once (their verdict is about the source; mypy's also depends on the numpy stubs each Python
# resolves, and the default venv is the one developers lint with), then the ctypes pass runs in it.
# When the default's version is not among those asked for, the first one asked for takes its place.
start=$SECONDS
default_version=""
if bash tools/bootstrap.sh; then
  default_version=$(version_of .venv/bin/python)
else
  record "python3" "bootstrap failed" $((SECONDS - start))
fi
order=()
[[ -n "$default_version" && " ${versions[*]} " == *" $default_version "* ]] && order+=("$default_version")
for version in "${versions[@]}"; do
  [ "$version" = "$default_version" ] || order+=("$version")
done

main_venv=""
for version in "${order[@]}"; do
  echo
  echo "=== Python $version ==="
  start=$SECONDS
  if [ "$version" = "$default_version" ]; then
    venv=.venv  # bootstrapped above
  else
    if ! python=$(find_python "$version"); then
      where="python$version on PATH or ${PYENV_ROOT:-$HOME/.pyenv}/versions/$version.*"
      if $in_ci; then
        echo "test.sh: no Python $version found ($where): required in CI" >&2
        record "$version" "MISSING" 0
      else
        echo "test.sh: no Python $version found ($where): skipped" >&2
        record "$version" "skipped (not found)" 0
      fi
      continue
    fi
    venv=.venvs/py$version
    echo "interpreter: $python"
    if ! bash tools/bootstrap.sh --python "$python"; then
      record "$version" "bootstrap failed" $((SECONDS - start))
      continue
    fi
  fi
  lint=()
  if [ -z "$main_venv" ]; then
    main_venv=$venv
  else
    lint=(--deselect tests/test_lint.py)
    for module in "${ORACLE_TESTS[@]}"; do lint+=(--deselect "$module"); done
  fi
  echo "$venv/bin/python -m pytest ${lint[*]} ${pytest_args[*]}"
  "$venv/bin/python" -m pytest "${lint[@]}" "${pytest_args[@]}"
  rc=$?
  if [ $rc -eq 0 ]; then
    record "$version" passed $((SECONDS - start))
  else
    record "$version" "FAILED (pytest exit $rc)" $((SECONDS - start))
  fi
done

# The ctypes call path (BPFJIT_CALL_PATH=ctypes) through the semantic, JIT and memory-safety tests.
echo
echo "=== BPFJIT_CALL_PATH=ctypes ==="
start=$SECONDS
[ -n "$main_venv" ] || [ ! -x .venv/bin/python ] || main_venv=.venv  # every Python asked for was skipped
if [ -z "$main_venv" ]; then
  echo "test.sh: no venv for the ctypes pass" >&2
  record "ctypes" "FAILED (no venv)" 0
else
  label="$(version_of "$main_venv/bin/python") ctypes"
  echo "BPFJIT_CALL_PATH=ctypes $main_venv/bin/python -m pytest ${FALLBACK_TESTS[*]} ${pytest_args[*]}"
  BPFJIT_CALL_PATH=ctypes "$main_venv/bin/python" -m pytest "${FALLBACK_TESTS[@]}" "${pytest_args[@]}"
  rc=$?
  if [ $rc -eq 0 ]; then
    record "$label" passed $((SECONDS - start))
  else
    record "$label" "FAILED (pytest exit $rc)" $((SECONDS - start))
  fi
fi

echo
printf '%-14s %-24s %8s\n' Python result seconds
printf '%-14s %-24s %8s\n' -------------- ------------------------ --------
total=0
for row in "${rows[@]}"; do
  IFS='|' read -r python result seconds <<<"$row"
  printf '%-14s %-24s %8s\n' "$python" "$result" "$seconds"
  total=$((total + seconds))
done
printf '%-14s %-24s %8s\n' total "" "$total"
exit $failed
