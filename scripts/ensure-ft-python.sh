#!/usr/bin/env bash
# Print the path of a free-threaded CPython (3.13t or newer), building one if
# none exists.  Search order: $ZOKIO_FT_PYTHON, python3.14t / python3.13t on
# PATH, then the build cache ($ZOKIO_CACHE, default ~/.cache/zokio).  When none
# is found, CPython 3.13 is built with --disable-gil from Debian's trixie
# source package.  The mirror is read from this machine's own apt sources; a
# private apt configuration under the cache is used so the system's sources
# are never touched.  All progress goes to stderr; stdout is only the path.
#
# Robustness notes:
# - Concurrent callers serialise on a lock in the cache; a caller that waited
#   reuses the interpreter the other one built.
# - The interpreter is installed into a staging directory and renamed into
#   place only once it works, so a half-installed or killed build is never
#   taken for a finished one (and is redone on the next call).
# - See scripts/cpython-src.sh for how the source is fetched (private apt
#   lists fetched afresh, fallback when $ZOKIO_PY_DEB_VERSION has left the
#   archive).
set -euo pipefail

CACHE="${ZOKIO_CACHE:-$HOME/.cache/zokio}"
PREFIX="$CACHE/cpython-3.13t"

log() { printf 'ensure-ft-python: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

is_free_threaded() {
  "$1" -c 'import sys, sysconfig; sys.exit(0 if sysconfig.get_config_var("Py_GIL_DISABLED") else 1)' 2>/dev/null
}

candidates=()
[ -n "${ZOKIO_FT_PYTHON:-}" ] && candidates+=("$ZOKIO_FT_PYTHON")
for name in python3.14t python3.13t; do
  p=$(command -v "$name" 2>/dev/null || true)
  [ -n "$p" ] && candidates+=("$p")
done
candidates+=("$PREFIX/bin/python3.13t")
for c in "${candidates[@]}"; do
  if [ -x "$c" ] && is_free_threaded "$c"; then
    echo "$c"
    exit 0
  fi
done

for tool in apt-get flock make cc tar; do
  command -v "$tool" >/dev/null 2>&1 || die "building CPython needs '$tool', which is not installed"
done

log "no free-threaded interpreter found; building CPython 3.13 (--disable-gil) into $PREFIX"
mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9
# Another process may have finished the build while we waited for the lock.
if [ -x "$PREFIX/bin/python3.13t" ] && is_free_threaded "$PREFIX/bin/python3.13t"; then
  echo "$PREFIX/bin/python3.13t"; exit 0
fi

# shellcheck source=scripts/cpython-src.sh
. "$(dirname "$0")/cpython-src.sh"
orig=$(cpython_tarball)
SRCDIR="$CACHE/src"

BUILD="$SRCDIR/build"
STAGE="$CACHE/stage"
rm -rf "$BUILD" "$STAGE" && mkdir -p "$BUILD"
tar -xf "$orig" -C "$BUILD" --strip-components=1
cd "$BUILD"
log "configuring ($(basename "$orig"))"
./configure --disable-gil --prefix="$PREFIX" --with-ensurepip=install >"$CACHE/configure.log" 2>&1 \
  || { tail -n 30 "$CACHE/configure.log" >&2; die "configure failed (log: $CACHE/configure.log)"; }
log "compiling (a few minutes)"
make -j"$(nproc)" >"$CACHE/make.log" 2>&1 \
  || { tail -n 40 "$CACHE/make.log" >&2; die "make failed (log: $CACHE/make.log)"; }
make install DESTDIR="$STAGE" >"$CACHE/install.log" 2>&1 \
  || { tail -n 40 "$CACHE/install.log" >&2; die "make install failed (log: $CACHE/install.log)"; }
cd "$CACHE"
rm -rf "$BUILD"

# Check the staged interpreter (it runs from the staging path with PYTHONHOME).
staged="$STAGE$PREFIX"
PYTHONHOME="$staged" "$staged/bin/python3.13t" -c 'import sys, sysconfig; sys.exit(0 if sysconfig.get_config_var("Py_GIL_DISABLED") else 1)' \
  || die "built interpreter is not free-threaded"
# pip needs ssl and zlib; their absence means missing -dev packages at build time.
PYTHONHOME="$staged" "$staged/bin/python3.13t" -c 'import ssl, zlib, ctypes' 2>/dev/null \
  || die "built interpreter lacks ssl/zlib/ctypes: install libssl-dev zlib1g-dev libffi-dev and rerun (see $CACHE/make.log)"

rm -rf "$PREFIX"
mv "$staged" "$PREFIX"
rm -rf "$STAGE"
is_free_threaded "$PREFIX/bin/python3.13t" || die "installed interpreter does not run"
log "built $PREFIX/bin/python3.13t"
echo "$PREFIX/bin/python3.13t"
