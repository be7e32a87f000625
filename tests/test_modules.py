"""The split between the two extension modules (setup.py): zokio._native is
what users import; the test-only types live in zokio._native_testing, which
`import zokio` never loads."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap

import pytest

import zokio._native

TEST_ONLY_TYPES = {"TestPort", "TestLocalQueue", "TestInjectQueue", "TestTimerWheel"}


@pytest.mark.timeout(10)
def test_production_module_has_no_test_types():
    assert [name for name in dir(zokio._native) if name.startswith("Test")] == []


@pytest.mark.timeout(10)
def test_testing_module_holds_the_test_types():
    import zokio._native_testing as testing
    assert TEST_ONLY_TYPES <= set(dir(testing))
    for name in TEST_ONLY_TYPES:
        assert getattr(testing, name).__module__ == "zokio._native_testing"


IMPORT_AND_RUN = textwrap.dedent("""
    import sys
    import zokio
    async def main():
        await zokio.sleep(0)
        return 1
    assert zokio.run(main(), threads=1) == 1
    print(sorted(m for m in sys.modules if m.startswith("zokio.")))
""")


@pytest.mark.timeout(60)
def test_import_zokio_never_loads_the_testing_module(tmp_path, util):
    p = subprocess.run([sys.executable, "-c", IMPORT_AND_RUN], cwd=tmp_path,
                       env=util.subprocess_env(), capture_output=True, text=True, timeout=50)
    assert p.returncode == 0, p.stderr
    assert "zokio._native" in p.stdout
    assert "zokio._native_testing" not in p.stdout


IMPORT_TESTING = textwrap.dedent("""
    import sys, warnings
    warnings.simplefilter("error")     # "the GIL has been enabled" is a RuntimeWarning
    import zokio._native_testing
    print(sys._is_gil_enabled())
""")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"),
                    reason="the GIL is always on in a GIL build")
def test_testing_module_keeps_gil_disabled(tmp_path, util):
    p = subprocess.run([sys.executable, "-c", IMPORT_TESTING], cwd=tmp_path,
                       env=util.subprocess_env(), capture_output=True, text=True, timeout=50)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"
