/* testing.h -- test-only types that expose the pure-C data structures to
 * pytest (hypothesis model tests).  Each add function registers its heap
 * types on the module and returns 0, or -1 with an exception set. */
#ifndef ZOKIO_TESTING_H
#define ZOKIO_TESTING_H
#include "core/compat.h"

/* _native.TestTimerWheel */
int zk_timer_wheel_testing_add(PyObject *module);
/* _native.TestLocalQueue, _native.TestInjectQueue */
int zk_run_queue_testing_add(PyObject *module);
/* _native.TestPort */
int zk_port_testing_add(PyObject *module);

#endif
