/* module.c -- bindings of zokio._native_testing: registers the test-only
 * types and nothing else.  A separate extension (as CPython keeps _testcapi
 * apart from the modules users import), so the production module zokio._native
 * never carries them.  It is built from this folder plus the pure-C sources
 * of core/ and io/ the types wrap (setup.py), and shares no state with
 * zokio._native. */
#include "testing/testing.h"

static int module_exec(PyObject *module) {
    if (zk_timer_wheel_testing_add(module) < 0 || zk_run_queue_testing_add(module) < 0 ||
        zk_port_testing_add(module) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    /* As in zokio._native: TestTimerWheel locks itself, the queue and port
     * types are single-owner test objects.  Importing this module must not
     * re-enable the GIL under the very tests that check it stays off. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "zokio._native_testing",
    .m_doc = "Test-only types over zokio's native data structures (timer wheel, "
             "run queues, completion port).  Not part of zokio's API.",
    .m_size = 0,
    .m_slots = module_slots,
};

PyMODINIT_FUNC PyInit__native_testing(void) {
    return PyModuleDef_Init(&module_def);
}
