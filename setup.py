"""Build script for zokio's native kernel, zokio._native (CPython C API)."""
import glob
import sys

from setuptools import Extension, setup

extra_compile_args = ["-std=gnu11", "-Wall", "-Wextra", "-O2", "-g"]
if "--zokio-debug" in sys.argv:  # sanitizer builds: CFLAGS may add more
    sys.argv.remove("--zokio-debug")
    extra_compile_args = ["-std=gnu11", "-Wall", "-Wextra", "-O0", "-g3"]

setup(
    ext_modules=[
        Extension(
            "zokio._native",
            sources=sorted(glob.glob("native/**/*.c", recursive=True)),
            depends=sorted(glob.glob("native/**/*.h", recursive=True)),
            include_dirs=["native"],
            extra_compile_args=extra_compile_args,
        )
    ],
)
