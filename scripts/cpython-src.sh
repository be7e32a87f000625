# Sourced by ensure-ft-python.sh and ensure-tsan-python.sh (not run on its
# own).  Defines cpython_tarball, which prints the path of the CPython 3.13
# upstream source tarball in $CACHE/src, downloading Debian's trixie
# python3.13 source package first when no tarball is there.  The caller
# defines CACHE and the functions log and die; progress goes to stderr.
#
# The mirror is read from this machine's own apt sources; a private apt
# configuration under the cache is used so the system's sources are never
# touched.  The private apt lists are fetched afresh for every download, so
# stale lists (or a suite whose Release info changed since) cannot break it.
# If the pinned Debian version ($ZOKIO_PY_DEB_VERSION) has left the archive,
# the newest python3.13 in trixie is used instead.  Downloads serialise on
# $CACHE/.src.lock and land in a scratch directory first, so an interrupted
# one never looks like a complete source package.

cpython_newest_tarball() {  # newest upstream tarball in $CACHE/src, or nothing
  local f best=""
  for f in "$CACHE"/src/python3.13_*.orig.tar.xz "$CACHE"/src/python3.13_*.orig.tar.gz; do
    [ -f "$f" ] && best=$(printf '%s\n%s\n' "$best" "$f" | sort -V | tail -n 1)
  done
  echo "$best"
}

cpython_tarball() {
  local srcdir="$CACHE/src" deb_version="${ZOKIO_PY_DEB_VERSION:-3.13.5-2+deb13u5}"
  mkdir -p "$srcdir"
  if [ -z "$(cpython_newest_tarball)" ]; then
    # A subshell holds the lock (fd 8) only for the download.
    (
      flock 8
      [ -n "$(cpython_newest_tarball)" ] && exit 0  # another caller fetched it
      command -v apt-get >/dev/null 2>&1 || die "downloading the CPython source needs apt-get"
      local mirror="" f u
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

      local apt="$CACHE/apt"
      rm -rf "$apt/lists"  # always fresh: stale lists name files the mirror no longer has
      mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/etc"
      cat > "$apt/etc/sources.list" <<SRC
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main
SRC
      local apt_opts=(
        -o "Dir::Etc::SourceList=$apt/etc/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$apt/lists"
        -o "Dir::Cache=$apt"
        -o "APT::Sandbox::User=root"
      )
      apt-get "${apt_opts[@]}" update >&2 || die "apt-get update (private trixie deb-src list) failed"
      local dl="$srcdir/download.$$"
      rm -rf "$dl" && mkdir -p "$dl"
      if ! (cd "$dl" && apt-get "${apt_opts[@]}" source --download-only "python3.13=$deb_version" >&2); then
        log "python3.13=$deb_version is not in trixie any more; taking trixie's current python3.13"
        rm -rf "$dl" && mkdir -p "$dl"
        (cd "$dl" && apt-get "${apt_opts[@]}" source --download-only python3.13 >&2) \
          || { rm -rf "$dl"; die "cannot download the python3.13 source package"; }
      fi
      mv "$dl"/python3.13_* "$srcdir"/
      rm -rf "$dl"
    ) 8>"$CACHE/.src.lock" || exit 1
  fi
  local orig
  orig=$(cpython_newest_tarball)
  [ -n "$orig" ] || die "no python3.13 source tarball in $srcdir"
  echo "$orig"
}
