#!/usr/bin/env bash
# The whole test suite: tests/ on free-threaded CPython (tox env ft) and on the
# GIL python3 (tox env gil), each run once with ZOKIO_BACKEND=io_uring and once
# with ZOKIO_BACKEND=epoll.  Builds the free-threaded interpreter on first use
# (cached in ~/.cache/zokio).  Arguments go to pytest: ./scripts/test.sh -k timer
set -euo pipefail
exec "$(dirname "$0")/tox.sh" run -e ft,gil -- "$@"
