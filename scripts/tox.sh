#!/usr/bin/env bash
# Run tox for this project: finds (or builds, once) a free-threaded CPython
# with scripts/ensure-ft-python.sh, keeps tox in a tools venv in the cache
# ($ZOKIO_CACHE, default ~/.cache/zokio, at venvs/tools), exports
#   ZOKIO_FT_PYTHON   the free-threaded interpreter (tox envs ft, stress, bench)
#   ZOKIO_GIL_PYTHON  the GIL interpreter (tox env gil; default: python3)
# and, only when the tsan env is asked for (-e ...tsan...), also
#   ZOKIO_TSAN_PYTHON        a ThreadSanitizer-built 3.13t, found or built once
#                            by scripts/ensure-tsan-python.sh
#   ZOKIO_TSAN_SUPPRESSIONS  CPython's TSAN suppressions for that interpreter
#   ZOKIO_TSAN_SYMBOLIZER    an llvm-symbolizer that runs, for TSAN's stacks
# and passes every argument to tox, e.g.
#   scripts/tox.sh run -e stress
#   scripts/tox.sh run -e tsan -- -x
#   scripts/tox.sh run -e ft -- -k timer -x
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
CACHE="${ZOKIO_CACHE:-$HOME/.cache/zokio}"
log() { printf 'zokio/tox.sh: %s\n' "$*" >&2; }

ZOKIO_FT_PYTHON=$("$root/scripts/ensure-ft-python.sh")
export ZOKIO_FT_PYTHON
if [ -z "${ZOKIO_GIL_PYTHON:-}" ]; then
  ZOKIO_GIL_PYTHON=$(python3 -c 'import sys; print(sys.executable)') \
    || { log "python3 is not runnable; set ZOKIO_GIL_PYTHON"; exit 1; }
fi
export ZOKIO_GIL_PYTHON

wants_tsan=false
prev=""
for a in "$@"; do
  [ "$a" = "--" ] && break
  case "$prev" in -e|--env) envs="$a";; *) envs="";; esac
  case "$a" in -e?*) envs="${a#-e}";; --env=*) envs="${a#--env=}";; esac
  case ",$envs," in *,tsan,*) wants_tsan=true;; esac
  prev="$a"
done
if $wants_tsan; then
  ZOKIO_TSAN_PYTHON=$("$root/scripts/ensure-tsan-python.sh")
  export ZOKIO_TSAN_PYTHON
  if [ -z "${ZOKIO_TSAN_SUPPRESSIONS:-}" ]; then
    ZOKIO_TSAN_SUPPRESSIONS="$("$ZOKIO_TSAN_PYTHON" -c 'import sys; print(sys.base_prefix)' 2>/dev/null)/share/tsan/suppressions_free_threading.txt"
  fi
  [ -f "$ZOKIO_TSAN_SUPPRESSIONS" ] \
    || { log "no TSAN suppressions at $ZOKIO_TSAN_SUPPRESSIONS; set ZOKIO_TSAN_SUPPRESSIONS to CPython's Tools/tsan/suppressions_free_threading.txt"; exit 1; }
  export ZOKIO_TSAN_SUPPRESSIONS
  if [ -z "${ZOKIO_TSAN_SYMBOLIZER:-}" ]; then
    for c in llvm-symbolizer-{22..14} llvm-symbolizer; do
      p=$(command -v "$c" 2>/dev/null) || continue
      if "$p" --version >/dev/null 2>&1; then ZOKIO_TSAN_SYMBOLIZER=$p; break; fi
    done
  fi
  [ -n "${ZOKIO_TSAN_SYMBOLIZER:-}" ] \
    || { log "no llvm-symbolizer runs (apt-get install llvm); set ZOKIO_TSAN_SYMBOLIZER"; exit 1; }
  export ZOKIO_TSAN_SYMBOLIZER
fi

# tox on the GIL python3; the free-threaded one hosts it if python3 cannot make
# a venv with pip (Debian without python3-venv).  tox's virtualenv creates the
# test envs itself, for either interpreter.
TOOLS="$CACHE/venvs/tools"
TOOLS_REQ="tox>=4.23,<5 virtualenv>=20.29"
mkdir -p "$CACHE/venvs"
(
  flock 9
  if [ "$(cat "$TOOLS/.zokio-req" 2>/dev/null)" != "$TOOLS_REQ" ] \
     || ! "$TOOLS/bin/python" -c 'import tox' >/dev/null 2>&1; then
    log "creating the tools venv $TOOLS"
    for host in python3 "$ZOKIO_FT_PYTHON"; do
      rm -rf "$TOOLS"
      if "$host" -m venv "$TOOLS" >&2 && "$TOOLS/bin/python" -m pip --version >/dev/null 2>&1; then
        break
      fi
    done
    "$TOOLS/bin/python" -m pip --version >/dev/null 2>&1 || { log "cannot create a venv with pip"; exit 1; }
    # shellcheck disable=SC2086  # TOOLS_REQ is a list of requirements
    "$TOOLS/bin/python" -m pip install --quiet $TOOLS_REQ >&2
    echo "$TOOLS_REQ" > "$TOOLS/.zokio-req"
  fi
) 9>"$CACHE/venvs/.lock"

cd "$root"
exec "$TOOLS/bin/tox" "$@"
