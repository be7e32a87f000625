#!/usr/bin/env bash
# Print the path of a free-threaded CPython 3.13 built with ThreadSanitizer,
# building one if none exists (tox env tsan; scripts/tox.sh calls this only
# when that env is asked for).  Search order: $ZOKIO_TSAN_PYTHON, then the
# build cache ($ZOKIO_CACHE, default ~/.cache/zokio, at cpython-3.13t-tsan).
# When none is found, the CPython 3.13 source that ensure-ft-python.sh uses
# (Debian's trixie python3.13 source package, fetched by
# scripts/cpython-src.sh) is configured with
#   CC=clang --disable-gil --with-thread-sanitizer
# and installed into the cache.  CPython's TSAN suppressions for the
# free-threaded build (Tools/tsan/suppressions_free_threading.txt) are copied
# to <prefix>/share/tsan/ so that test runs can point TSAN_OPTIONS at them.
# All progress goes to stderr; stdout is only the path.
#
# clang: $ZOKIO_TSAN_CC, else the first clang on PATH (clang, clang-22 ...
# clang-14) that links a -fsanitize=thread program; with none,
# `apt-get install clang-19` (then plain `clang`) is tried; likewise llvm-19
# when no llvm-symbolizer runs (scripts/tox.sh hands TSAN the one found, as
# ZOKIO_TSAN_SYMBOLIZER).  pymalloc needs no
# flag: the free-threaded build allocates with mimalloc, which CPython
# annotates for TSAN.
#
# Robustness: the same rules as ensure-ft-python.sh.  Callers serialise on a
# lock in the cache (a caller that waited reuses the other one's build); the
# interpreter is installed into a staging directory and renamed into place
# only once it runs and is known to be a TSAN build, so a killed or broken
# build is redone on the next call.  Build logs: $CACHE/tsan-*.log.
set -euo pipefail

CACHE="${ZOKIO_CACHE:-$HOME/.cache/zokio}"
PREFIX="$CACHE/cpython-3.13t-tsan"
SUPP_REL="share/tsan/suppressions_free_threading.txt"

log() { printf 'ensure-tsan-python: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

is_tsan_ft() {  # free-threaded, built with -fsanitize=thread
  "$1" -c 'import sys, sysconfig as s; sys.exit(0 if s.get_config_var("Py_GIL_DISABLED") and "-fsanitize=thread" in (s.get_config_var("CONFIG_ARGS") or "") + (s.get_config_var("PY_CFLAGS") or "") else 1)' >/dev/null 2>&1
}

# TSAN's reports name functions and lines only through an llvm-symbolizer.
# (Debian's clang-19 looks for llvm-symbolizer-19, which is in package llvm-19.)
find_symbolizer() {
  local c p
  for c in llvm-symbolizer-{22..14} llvm-symbolizer; do
    p=$(command -v "$c" 2>/dev/null) || continue
    if "$p" --version >/dev/null 2>&1; then echo "$p"; return 0; fi
  done
  return 1
}
if ! find_symbolizer >/dev/null; then
  log "no llvm-symbolizer (TSAN reports would have no function names); installing llvm-19 with apt-get"
  { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends llvm-19 >&2; } \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y llvm >&2 \
    || log "cannot install llvm-symbolizer: TSAN reports will show addresses only"
fi

if [ -n "${ZOKIO_TSAN_PYTHON:-}" ]; then
  is_tsan_ft "$ZOKIO_TSAN_PYTHON" \
    || die "ZOKIO_TSAN_PYTHON=$ZOKIO_TSAN_PYTHON is not a free-threaded ThreadSanitizer build"
  echo "$ZOKIO_TSAN_PYTHON"; exit 0
fi
if [ -x "$PREFIX/bin/python3.13t" ] && [ -f "$PREFIX/$SUPP_REL" ] && is_tsan_ft "$PREFIX/bin/python3.13t"; then
  echo "$PREFIX/bin/python3.13t"; exit 0
fi

for tool in flock make tar; do
  command -v "$tool" >/dev/null 2>&1 || die "building CPython needs '$tool', which is not installed"
done

mkdir -p "$CACHE"
exec 9>"$CACHE/.build-tsan.lock"
flock 9
# Another process may have finished the build while we waited for the lock.
if [ -x "$PREFIX/bin/python3.13t" ] && [ -f "$PREFIX/$SUPP_REL" ] && is_tsan_ft "$PREFIX/bin/python3.13t"; then
  echo "$PREFIX/bin/python3.13t"; exit 0
fi

links_tsan() {  # $1 compiles and links a -fsanitize=thread program
  local d rc
  d=$(mktemp -d)
  printf 'int main(void) { return 0; }\n' > "$d/t.c"
  "$1" -fsanitize=thread "$d/t.c" -o "$d/t" >/dev/null 2>&1 && "$d/t" >/dev/null 2>&1
  rc=$?
  rm -rf "$d"
  return $rc
}
find_clang() {
  local c p names=(clang clang-{22..14})
  [ -n "${ZOKIO_TSAN_CC:-}" ] && names=("$ZOKIO_TSAN_CC")
  for c in "${names[@]}"; do
    p=$(command -v "$c" 2>/dev/null) || continue
    if links_tsan "$p"; then echo "$p"; return 0; fi
  done
  return 1
}
CC=$(find_clang) || {
  [ -z "${ZOKIO_TSAN_CC:-}" ] || die "ZOKIO_TSAN_CC=$ZOKIO_TSAN_CC cannot link a -fsanitize=thread program"
  command -v apt-get >/dev/null 2>&1 || die "no clang with the TSAN runtime, and no apt-get to install one"
  log "no clang with the TSAN runtime; installing clang-19 with apt-get"
  apt-get update >&2 || log "apt-get update failed; trying the install anyway"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends clang-19 libclang-rt-19-dev >&2 \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y clang >&2 \
    || die "cannot install clang"
  CC=$(find_clang) || die "clang is installed but cannot link a -fsanitize=thread program"
}
log "using $CC ($("$CC" --version | head -n 1))"

# shellcheck source=scripts/cpython-src.sh
. "$(dirname "$0")/cpython-src.sh"
orig=$(cpython_tarball)

BUILD="$CACHE/src/build-tsan"
STAGE="$CACHE/stage-tsan"
rm -rf "$BUILD" "$STAGE" && mkdir -p "$BUILD"
tar -xf "$orig" -C "$BUILD" --strip-components=1
[ -f "$BUILD/Tools/tsan/suppressions_free_threading.txt" ] \
  || die "$(basename "$orig") has no Tools/tsan/suppressions_free_threading.txt"
# The build runs the new interpreter (module checks, ensurepip): give it the
# suppressions, and do not let a TSAN report fail the build itself.
export TSAN_OPTIONS="suppressions=$BUILD/Tools/tsan/suppressions_free_threading.txt exitcode=0"
cd "$BUILD"
log "building CPython 3.13 (--disable-gil --with-thread-sanitizer, $(basename "$orig")) into $PREFIX"
CC="$CC" ./configure --disable-gil --with-thread-sanitizer --prefix="$PREFIX" --with-ensurepip=install \
    >"$CACHE/tsan-configure.log" 2>&1 \
  || { tail -n 30 "$CACHE/tsan-configure.log" >&2; die "configure failed (log: $CACHE/tsan-configure.log)"; }
log "compiling (10 minutes or more on 2 cores)"
make -j"$(nproc)" >"$CACHE/tsan-make.log" 2>&1 \
  || { tail -n 40 "$CACHE/tsan-make.log" >&2; die "make failed (log: $CACHE/tsan-make.log)"; }
log "installing (ensurepip runs under TSAN: a few minutes)"
make install DESTDIR="$STAGE" >"$CACHE/tsan-install.log" 2>&1 \
  || { tail -n 40 "$CACHE/tsan-install.log" >&2; die "make install failed (log: $CACHE/tsan-install.log)"; }
staged="$STAGE$PREFIX"
mkdir -p "$(dirname "$staged/$SUPP_REL")"
cp "$BUILD/Tools/tsan/suppressions_free_threading.txt" "$staged/$SUPP_REL"
cd "$CACHE"
rm -rf "$BUILD"

# Check the staged interpreter (it runs from the staging path with PYTHONHOME).
PYTHONHOME="$staged" is_tsan_ft "$staged/bin/python3.13t" \
  || die "built interpreter is not a free-threaded TSAN build (see $CACHE/tsan-make.log)"
PYTHONHOME="$staged" "$staged/bin/python3.13t" -c 'import ssl, zlib, ctypes' >/dev/null 2>&1 \
  || die "built interpreter lacks ssl/zlib/ctypes: install libssl-dev zlib1g-dev libffi-dev and rerun (see $CACHE/tsan-make.log)"
PYTHONHOME="$staged" "$staged/bin/python3.13t" -m pip --version >/dev/null 2>&1 \
  || die "ensurepip did not install pip (see $CACHE/tsan-install.log)"

rm -rf "$PREFIX"
mv "$staged" "$PREFIX"
rm -rf "$STAGE"
is_tsan_ft "$PREFIX/bin/python3.13t" || die "installed interpreter does not run"
log "built $PREFIX/bin/python3.13t"
echo "$PREFIX/bin/python3.13t"
