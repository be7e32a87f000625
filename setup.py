"""Build script for zokio's native code (CPython C API): two extensions.

zokio._native          the kernel users import: native/module.c (bindings),
                       native/core/ and native/io/
zokio._native_testing  test-only types (native/testing/) over the pure-C
                       structures they wrap; `import zokio` never loads it
"""
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
# Only PyInit_* is exported (PyMODINIT_FUNC marks it).  The kernel's zk_*
# functions stay inside their extension: the two extensions link some of the
# same sources without their symbols meeting, and calls between the kernel's
# files are direct (with -fPIC and default visibility every such call could
# be interposed, so the compiler may neither inline it nor bind it locally).
extra_compile_args.append("-fvisibility=hidden")


def sources(*patterns):
    return sorted(f for p in patterns for f in glob.glob(p))


# Headers of every layer: a change to any of them rebuilds both extensions.
headers = sources("native/*/*.h")

# The parts of core/ and io/ that the test-only types drive.  None of them
# needs the kernel's module state, so the testing module links them without
# the rest of the kernel (op.c's Python half is linked too, but only the Op
# leaf of zokio._native calls it).
wrapped_by_tests = [
    "native/core/run_queue.c",
    "native/core/timer_wheel.c",
    "native/io/op.c",  # the descriptor table the ports read
    "native/io/port.c",
    "native/io/port_epoll.c",
    "native/io/port_uring.c",
]

setup(
    ext_modules=[
        Extension(
            "zokio._native",
            sources=sources("native/module.c", "native/core/*.c", "native/io/*.c", "native/sync/*.c"),
            depends=headers,
            include_dirs=["native"],
            extra_compile_args=extra_compile_args,
        ),
        Extension(
            "zokio._native_testing",
            sources=sources("native/testing/*.c") + wrapped_by_tests,
            depends=headers,
            include_dirs=["native"],
            extra_compile_args=extra_compile_args,
        ),
    ],
)
