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
# - The private apt lists are fetched afresh for every build, so stale lists
#   (or a suite whose Release info changed since) cannot break it.  If the
#   pinned Debian version ($ZOKIO_PY_DEB_VERSION) has left the archive, the
#   newest python3.13 in trixie is used instead.
set -euo pipefail

CACHE="${ZOKIO_CACHE:-$HOME/.cache/zokio}"
PY_DEB_VERSION="${ZOKIO_PY_DEB_VERSION:-3.13.5-2+deb13u5}"
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

SRCDIR="$CACHE/src"
mkdir -p "$SRCDIR"
orig_tarball() {  # newest upstream tarball in $SRCDIR, or nothing
  local f best=""
  for f in "$SRCDIR"/python3.13_*.orig.tar.xz "$SRCDIR"/python3.13_*.orig.tar.gz; do
    [ -f "$f" ] && best=$(printf '%s\n%s\n' "$best" "$f" | sort -V | tail -n 1)
  done
  echo "$best"
}
if [ -z "$(orig_tarball)" ]; then
  mirror=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    for u in $(awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' "$f"); do
      case "$u" in */debian|*/debian/) mirror="${u%/}"; break 2;; esac
    done
  done
  if [ -z "$mirror" ]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      # deb [opts] URI suite comps: skip the bracketed options, if any.
      mirror=$(awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
                                  if ($i ~ /\/debian\/?$/) { sub(/\/$/, "", $i); print $i; exit } }' "$f")
      [ -n "$mirror" ] && break
    done
  fi
  [ -n "$mirror" ] || die "cannot find a Debian mirror in the apt configuration"
  log "using mirror $mirror"

  APT="$CACHE/apt"
  rm -rf "$APT/lists"  # always fresh: stale lists name files the mirror no longer has
  mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$APT/etc"
  cat > "$APT/etc/sources.list" <<SRC
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main
SRC
  apt_opts=(
    -o "Dir::Etc::SourceList=$APT/etc/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$APT/lists"
    -o "Dir::Cache=$APT"
    -o "APT::Sandbox::User=root"
  )
  apt-get "${apt_opts[@]}" update >&2 || die "apt-get update (private trixie deb-src list) failed"
  # Download into a scratch directory so an interrupted download leaves nothing
  # that looks like a complete source package.
  dl="$SRCDIR/download.$$"
  rm -rf "$dl" && mkdir -p "$dl"
  if ! (cd "$dl" && apt-get "${apt_opts[@]}" source --download-only "python3.13=$PY_DEB_VERSION" >&2); then
    log "python3.13=$PY_DEB_VERSION is not in trixie any more; taking trixie's current python3.13"
    rm -rf "$dl" && mkdir -p "$dl"
    (cd "$dl" && apt-get "${apt_opts[@]}" source --download-only python3.13 >&2) \
      || { rm -rf "$dl"; die "cannot download the python3.13 source package"; }
  fi
  mv "$dl"/python3.13_* "$SRCDIR"/
  rm -rf "$dl"
fi
orig=$(orig_tarball)
[ -n "$orig" ] || die "no python3.13 source tarball in $SRCDIR"

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
