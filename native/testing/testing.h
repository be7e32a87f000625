/* testing.h -- the test-only types of zokio._native_testing (built from this
 * folder, never imported by `import zokio`).  They expose the pure-C data
 * structures of core/ and io/ to pytest (hypothesis model tests, the port
 * conformance suite).  Each add function registers its heap types on the
 * module and returns 0, or -1 with an exception set. */
#ifndef ZOKIO_TESTING_H
#define ZOKIO_TESTING_H
#include "core/compat.h"

/* TestTimerWheel (core/timer_wheel.c) */
int zk_timer_wheel_testing_add(PyObject *module);
/* TestLocalQueue, TestInjectQueue (core/run_queue.c) */
int zk_run_queue_testing_add(PyObject *module);
/* TestPort (io/port.c and both backends) */
int zk_port_testing_add(PyObject *module);

#endif
