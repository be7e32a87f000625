#!/usr/bin/env bash
# The benchmark suite side by side with asyncio, uvloop and trio, all on the
# same free-threaded interpreter (tox env bench); writes docs/benchmarks.md.
# Builds the free-threaded interpreter on first use (cached in ~/.cache/zokio).
# Arguments go to bench/run_all.py: ./scripts/bench.sh --help
set -euo pipefail
exec "$(dirname "$0")/tox.sh" run -e bench -- "$@"
