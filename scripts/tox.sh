#!/usr/bin/env bash
# Run tox for this project: finds (or builds, once) a free-threaded CPython
# with scripts/ensure-ft-python.sh, keeps tox in a tools venv in the cache
# ($ZOKIO_CACHE, default ~/.cache/zokio, at venvs/tools), exports
#   ZOKIO_FT_PYTHON   the free-threaded interpreter (tox envs ft, stress, bench)
#   ZOKIO_GIL_PYTHON  the GIL interpreter (tox env gil; default: python3)
# and passes every argument to tox, e.g.
#   scripts/tox.sh run -e stress
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
