/* timeout_arg.h -- the `timeout` argument of every wait a plain thread makes
 * (JoinHandle.result, acquire_blocking, wait_blocking, send/recv_blocking).
 *
 * One reading for all of them, so that no wait turns a strange value into
 * undefined behaviour (a NaN or 1e300 cast to int64 comes out negative,
 * which a wait took for "no timeout"):
 *   None                 -> -1, no end
 *   NaN                  -> ValueError
 *   <= 0                 -> 0, a poll
 *   +inf, or beyond what int64 ns holds (~292 years) -> -1, no end
 *   not a number         -> TypeError naming the type
 */
#ifndef ZOKIO_TIMEOUT_ARG_H
#define ZOKIO_TIMEOUT_ARG_H

#include "core/compat.h"
#include <math.h>

/* 9.2e9 s fits int64 ns (9.22e18); anything longer is "no end". */
#define ZK_TIMEOUT_MAX_SECONDS 9.0e9

static inline int zk_timeout_arg_ns(PyObject *timeout, int64_t *out) {
    if (timeout == NULL || timeout == Py_None) {
        *out = -1;
        return 0;
    }
    double d = PyFloat_AsDouble(timeout);
    if (d == -1.0 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Format(PyExc_TypeError, "timeout must be a number of seconds or None, not %.100s",
                         Py_TYPE(timeout)->tp_name);
        }
        return -1;   /* OverflowError of a huge int stays: it is not a float */
    }
    if (isnan(d)) {
        PyErr_SetString(PyExc_ValueError, "timeout is NaN");
        return -1;
    }
    if (d <= 0) {
        *out = 0;
        return 0;
    }
    *out = d >= ZK_TIMEOUT_MAX_SECONDS ? -1 : (int64_t)(d * 1e9);
    return 0;
}

#endif
