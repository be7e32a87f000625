#!/usr/bin/env bash
# Run pytest under a ThreadSanitizer-built interpreter (tox env tsan) and
# summarise what TSAN reported.  Usage: tsan-pytest.sh LOGDIR [pytest args].
#
# TSAN writes its reports to stderr, where pytest's output capture swallows
# those raised during passing tests; here they go to LOGDIR/tsan.<pid>
# instead (log_path, appended to the caller's TSAN_OPTIONS), one file per
# process, subprocesses included.  Afterwards each distinct report is listed
# once with how often it occurred (see summarize below).  Exit status:
# pytest's, or 66 (TSAN's own) when pytest passed but a report was written.
set -uo pipefail

# summarize LOGDIR: list the reports in LOGDIR/tsan.* (also usable on its own:
# tsan-pytest.sh --summarize LOGDIR).  One report runs from its WARNING line
# to its SUMMARY line; it is keyed by the SUMMARY line and classed as
#   zokio      one of the racing accesses is made in native/ itself (a .c or
#              .h file there or one folder down: native/core/task.c)
#   via-zokio  the accesses are in CPython, with native/ further down a
#              stack (every task runs under worker_loop, so this says little)
#   other      no native/ frame at all
summarize() {
  local logdir=$1 logs total
  shopt -s nullglob
  logs=("$logdir"/tsan.*)
  if [ ${#logs[@]} -eq 0 ]; then
    echo "tsan-pytest: no ThreadSanitizer reports"
    return 0
  fi
  awk '
    /^WARNING: ThreadSanitizer:/ { top = 0; deep = 0; first = 0 }
    /^  (Previous )?([Aa]tomic )?([Rr]ead|[Ww]rite) of size/ { first = 1; next }
    /^ +#[0-9]+ / {
      if ($0 ~ /[\/ ]native\/([A-Za-z0-9_]+\/)?[A-Za-z0-9_]+\.[ch]:/) { if (first && $1 == "#0") top = 1; else deep = 1 }
      first = 0
    }
    /^SUMMARY: ThreadSanitizer:/ {
      sub(/^SUMMARY: ThreadSanitizer: /, "")
      printf "%-9s  %s\n", (top ? "zokio" : deep ? "via-zokio" : "other"), $0
    }
  ' "${logs[@]}" | sed -E 's#/[^ ]*/(native/)#\1#; s#/[^ ]*/build-tsan/##' | sort | uniq -c | sort -k2,2r -k1,1rn > "$logdir/summary.txt"
  total=$(awk '{ n += $1 } END { print n + 0 }' "$logdir/summary.txt")
  echo "tsan-pytest: $total ThreadSanitizer report(s) in ${#logs[@]} process(es); full reports in $logdir/tsan.*"
  echo "tsan-pytest: count, class (zokio = an access in native/), SUMMARY line:"
  cat "$logdir/summary.txt"
  return 1
}

if [ "${1:-}" = "--summarize" ]; then
  [ $# -eq 2 ] || { echo "usage: $0 --summarize LOGDIR" >&2; exit 2; }
  summarize "$2"
  exit 0
fi
[ $# -ge 1 ] || { echo "usage: $0 LOGDIR [pytest args]" >&2; exit 2; }
logdir=$1
shift
rm -rf "$logdir"
mkdir -p "$logdir"
export TSAN_OPTIONS="${TSAN_OPTIONS:-} log_path=$logdir/tsan"

pytest "$@"
rc=$?
if ! summarize "$logdir" && [ "$rc" -eq 0 ]; then
  rc=66
fi
exit "$rc"
