#!/usr/bin/env bash
# The benchmark suite side by side with asyncio, uvloop and trio, all on the
# same free-threaded interpreter (tox env bench); writes docs/benchmarks.md.
# Builds the free-threaded interpreter on first use (cached in ~/.cache/zokio).
# Arguments go to bench/run_all.py: ./scripts/bench.sh --help
set -euo pipefail

# The net workload drives its HTTP servers with wrk (Debian package wrk) and
# compiles its C parts with gcc.
if ! command -v wrk >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench.sh: installing wrk" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q wrk >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wrk >/dev/null 2>&1; } \
            || echo "bench.sh: could not install wrk; the HTTP rows of the net workload will say missing" >&2
    else
        echo "bench.sh: wrk is not installed (apt-get install wrk); the HTTP rows of the net workload will say missing" >&2
    fi
fi
command -v gcc >/dev/null 2>&1 || echo "bench.sh: gcc is missing; the echo rows of the net workload will say missing" >&2

exec "$(dirname "$0")/tox.sh" run -e bench -- "$@"
