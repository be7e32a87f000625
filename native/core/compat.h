/* compat.h -- portability shims shared by every native file.
 *
 * zokio builds on free-threaded 3.13t (the target) and on GIL builds 3.11+.
 * PyMutex only exists from 3.13; older interpreters get a pthread mutex that
 * is waited for detached, as PyMutex is.  The rule for every lock of ours:
 * an attached thread never blocks on it without detaching (see also
 * blocking_pool.c).
 */
#ifndef ZOKIO_COMPAT_H
#define ZOKIO_COMPAT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stddef.h>

#if PY_VERSION_HEX >= 0x030D0000
#define ZK_HAVE_PYMUTEX 1
typedef PyMutex zk_mutex;
#define ZK_MUTEX_INIT {0}
static inline void zk_mutex_init(zk_mutex *m) { memset(m, 0, sizeof(*m)); }
static inline void zk_mutex_lock(zk_mutex *m) { PyMutex_Lock(m); }
static inline void zk_mutex_unlock(zk_mutex *m) { PyMutex_Unlock(m); }
static inline void zk_mutex_destroy(zk_mutex *m) { (void)m; }
#else
#include <pthread.h>
#include <string.h>
typedef pthread_mutex_t zk_mutex;
static inline void zk_mutex_init(zk_mutex *m) { pthread_mutex_init(m, NULL); }
/* Like PyMutex_Lock on 3.13+: a thread that must wait for the mutex while
 * holding the GIL releases it first.  Otherwise a holder of the mutex that
 * needs the GIL (a destructor that runs Python code, a wait to re-attach)
 * and a GIL holder waiting for the mutex deadlock each other. */
static inline void zk_mutex_lock(zk_mutex *m) {
    if (pthread_mutex_trylock(m) == 0)
        return;
    if (PyGILState_Check()) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(m);
        Py_END_ALLOW_THREADS
    } else {
        pthread_mutex_lock(m);
    }
}
static inline void zk_mutex_unlock(zk_mutex *m) { pthread_mutex_unlock(m); }
static inline void zk_mutex_destroy(zk_mutex *m) { pthread_mutex_destroy(m); }
#endif

#define ZK_CACHELINE 64

/* Make an object the calling thread just created immortal, on free-threaded
 * builds: the objects every task touches (the task and leaf types, the
 * yield_now instance) would otherwise have their reference counts bounced
 * between workers -- atomic traffic on one cache line and, for an object
 * owned by another thread, a trip through CPython's biased-refcount queue
 * on each cross-thread decref.  Py_SET_REFCNT with a count above UINT32_MAX
 * on the owning thread is CPython's own "make immortal" path.  They live as
 * long as the module, which is never unloaded. */
static inline void zk_immortalize(PyObject *obj) {
#ifdef Py_GIL_DISABLED
    Py_SET_REFCNT(obj, (Py_ssize_t)UINT32_MAX + 1);
#else
    (void)obj;
#endif
}
#define ZK_UNUSED(x) ((void)(x))

#endif

#ifndef ZOKIO_COMPAT_EXC
#define ZOKIO_COMPAT_EXC
/* Take the raised exception as one normalized instance (traceback attached),
 * clearing the error indicator.  PyErr_GetRaisedException is 3.12+. */
static inline PyObject *zk_fetch_exception(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL)
        return NULL;
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

/* Raise an exception instance (borrowed). */
static inline void zk_raise_instance(PyObject *exc) {
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(Py_NewRef(exc));
#else
    PyObject *tb = PyException_GetTraceback(exc);
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), Py_NewRef(exc), tb);
#endif
}
#endif
