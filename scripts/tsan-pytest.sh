#!/usr/bin/env bash
# Run pytest under a ThreadSanitizer-built interpreter (tox env tsan) and
# summarise what TSAN reported.  Usage: tsan-pytest.sh LOGDIR [pytest args].
#
# TSAN writes its reports to stderr, where pytest's output capture swallows
# those raised during passing tests; here they go to LOGDIR/tsan.<pid>
# instead (log_path, appended to the caller's TSAN_OPTIONS), one file per
# process, subprocesses included.  Afterwards each distinct report is listed
# once with how often it occurred, and those whose stacks pass through
# zokio's native code (a native/*.c file) are marked "zokio".  Exit status:
# pytest's, or 66 (TSAN's own) when pytest passed but a report was written.
set -uo pipefail

[ $# -ge 1 ] || { echo "usage: $0 LOGDIR [pytest args]" >&2; exit 2; }
logdir=$1
shift
rm -rf "$logdir"
mkdir -p "$logdir"
export TSAN_OPTIONS="${TSAN_OPTIONS:-} log_path=$logdir/tsan"

pytest "$@"
rc=$?

shopt -s nullglob
logs=("$logdir"/tsan.*)
if [ ${#logs[@]} -eq 0 ]; then
  echo "tsan-pytest: no ThreadSanitizer reports"
  exit "$rc"
fi
# One report runs from its WARNING line to its SUMMARY line; key it by the
# SUMMARY line, and say whether any frame of it is in native/*.c.
awk '
  /^WARNING: ThreadSanitizer:/ { zk = 0 }
  /^ +#[0-9]+ .*[\/ ]native\/[A-Za-z0-9_]+\.[ch]:/ { zk = 1 }
  /^SUMMARY: ThreadSanitizer:/ {
    sub(/^SUMMARY: ThreadSanitizer: /, "")
    print (zk ? "zokio  " : "other  ") $0
  }
' "${logs[@]}" | sed -E 's#/[^ ]*/(native/)#\1#' | sort | uniq -c | sort -rn > "$logdir/summary.txt"
total=$(awk '{ n += $1 } END { print n + 0 }' "$logdir/summary.txt")
echo "tsan-pytest: $total ThreadSanitizer report(s) in ${#logs[@]} process(es); full reports in $logdir/tsan.*"
echo "tsan-pytest: count, where (zokio = a frame in native/), first frame of the SUMMARY:"
cat "$logdir/summary.txt"
[ "$rc" -eq 0 ] && rc=66
exit "$rc"
