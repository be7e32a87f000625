"""Build script for zokio's native kernel, zokio._native (CPython C API)."""
import glob
import os
import shlex
import sys

from setuptools import Extension, setup

extra_compile_args = ["-std=gnu11", "-Wall", "-Wextra", "-O2", "-g"]
if "--zokio-debug" in sys.argv:  # sanitizer builds: CFLAGS may add more
    sys.argv.remove("--zokio-debug")
    extra_compile_args = ["-std=gnu11", "-Wall", "-Wextra", "-O0", "-g3"]
# extra_compile_args come after $CFLAGS on the compiler's command line: let an
# optimisation level given in CFLAGS (tox env tsan: -O1) win over ours.
if any(f.startswith("-O") for f in shlex.split(os.environ.get("CFLAGS", ""))):
    extra_compile_args = [a for a in extra_compile_args if not a.startswith("-O")]

setup(
    ext_modules=[
        Extension(
            "zokio._native",
            sources=sorted(glob.glob("native/*.c")),
            depends=sorted(glob.glob("native/*.h")),
            extra_compile_args=extra_compile_args,
        )
    ],
)
