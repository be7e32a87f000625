/* module.c -- Python bindings of zokio._native: module state, module-level
 * functions, and the registration of every type.  No kernel logic here. */
#include "core/leaf.h"
#include "core/sched.h"
#include "core/task.h"
#include "io/op_leaf.h"
#include "io/port.h"
#include "io/signal.h"
#include "io/stream.h"
#include "sync/cancel_scope.h"
#include "sync/waitlist.h"
#include <signal.h>
#include <math.h>
#include <fcntl.h>      /* AT_FDCWD, AT_* (files) */
#include <sys/stat.h>   /* STATX_* (files) */
/* ---- channels ---- */
#include "sync/channel.h"
/* ---- end of channels ---- */

static zk_state *get_state(PyObject *module) {
    return (zk_state *)PyModule_GetState(module);
}

static zk_sched *require_sched(const char *what) {
    zk_sched *s = zk_current_sched();
    if (s == NULL && zk_worker_before_fork)
        PyErr_Format(PyExc_RuntimeError,
                     "%s: this thread ran a zokio task when the process forked; the "
                     "runtime stayed in the parent and cannot be used after os.fork(); "
                     "create a new Runtime in the child", what);
    else if (s == NULL)
        PyErr_Format(PyExc_RuntimeError,
                     "%s must be called from inside a zokio runtime (a task run "
                     "by Runtime.block_on() or Runtime.spawn()), but no runtime "
                     "is running on this thread", what);
    return s;
}

/* spawn(coro, *, name=None): vectorcall, it is on the hot path. */
static PyObject *mod_spawn(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames) {
    ZK_UNUSED(module);
    PyObject *name = Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "spawn() takes 1 positional argument (%zd given)", nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        if (!PyUnicode_Check(key) || PyUnicode_CompareWithASCIIString(key, "name") != 0) {
            PyErr_Format(PyExc_TypeError, "spawn() got an unexpected keyword argument %R", key);
            return NULL;
        }
        name = args[nargs + i];
    }
    PyObject *coro = args[0];
    zk_sched *s = zk_current_sched();
    if (s == NULL) {
        /* Close it so the error is not followed by a "never awaited" warning. */
        if (PyCoro_CheckExact(coro)) {
            PyObject *r = PyObject_CallMethod(coro, "close", NULL);
            if (r == NULL)
                PyErr_Clear();
            Py_XDECREF(r);
        }
        return require_sched("zokio.spawn()") == NULL ? NULL : NULL;
    }
    return zk_sched_spawn(s, coro, name);
}

static PyObject *mod_yield_now(PyObject *module, PyObject *Py_UNUSED(ignored)) {
    return Py_NewRef(get_state(module)->yield_now);  /* immortal on 3.13t */
}

static int parse_seconds(PyObject *arg, double *out, const char *what) {
    double d = PyFloat_AsDouble(arg);
    if (d == -1.0 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;   /* an int too large for a float: its own error says so */
        PyErr_Format(PyExc_TypeError, "%s expects a number of seconds, not %.100s",
                     what, Py_TYPE(arg)->tp_name);
        return -1;
    }
    if (isnan(d)) {
        PyErr_Format(PyExc_ValueError, "%s: NaN is not a duration", what);
        return -1;
    }
    *out = d;
    return 0;
}

static int64_t add_seconds(int64_t base_ns, double seconds) {
    if (seconds <= 0)
        return base_ns;
    double ns = seconds * 1e9;
    if (ns >= (double)(INT64_MAX - base_ns))
        return INT64_MAX;
    return base_ns + (int64_t)ns;
}

static PyObject *mod_sleep(PyObject *module, PyObject *arg) {
    double seconds;
    if (parse_seconds(arg, &seconds, "zokio.sleep()") < 0)
        return NULL;
    if (seconds < 0) {
        PyErr_Format(PyExc_ValueError, "zokio.sleep() duration must be >= 0, got %R", arg);
        return NULL;
    }
    return zk_sleep_new(get_state(module), add_seconds(zk_monotonic_ns(), seconds));
}

static PyObject *mod_sleep_until(PyObject *module, PyObject *arg) {
    double deadline;
    if (parse_seconds(arg, &deadline, "zokio.sleep_until()") < 0)
        return NULL;
    return zk_sleep_new(get_state(module), add_seconds(0, deadline));
}

static PyObject *mod_monotonic(PyObject *module, PyObject *Py_UNUSED(ignored)) {
    ZK_UNUSED(module);
    return PyFloat_FromDouble((double)zk_monotonic_ns() / 1e9);
}

static PyObject *mod_spawn_blocking(PyObject *module, PyObject *args, PyObject *kwargs) {
    ZK_UNUSED(module);
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if (n < 1) {
        PyErr_SetString(PyExc_TypeError, "spawn_blocking() needs a callable");
        return NULL;
    }
    PyObject *fn = PyTuple_GET_ITEM(args, 0);
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "spawn_blocking() needs a callable, not %R", fn);
        return NULL;
    }
    zk_sched *s = require_sched("zokio.spawn_blocking()");
    if (s == NULL)
        return NULL;
    PyObject *rest = PyTuple_GetSlice(args, 1, n);
    if (rest == NULL)
        return NULL;
    PyObject *r = zk_sched_spawn_blocking(s, fn, rest, kwargs);
    Py_DECREF(rest);
    return r;
}

static PyObject *mod_current_scheduler(PyObject *module, PyObject *Py_UNUSED(ignored)) {
    ZK_UNUSED(module);
    zk_sched *s = zk_current_sched();
    if (s == NULL)
        Py_RETURN_NONE;
    return Py_NewRef((PyObject *)s);
}

static PyObject *mod_current_task(PyObject *module, PyObject *Py_UNUSED(ignored)) {
    ZK_UNUSED(module);
    if (zk_current_task == NULL)
        Py_RETURN_NONE;
    return Py_NewRef((PyObject *)zk_current_task);
}

static PyObject *new_op(PyObject *module, zk_opcode opcode, int fd, PyObject *arg,
                        PyObject *address, long long offset, int flags) {
    zk_op_args a = {.arg = arg, .address = address, .offset = offset, .flags = flags};
    return zk_io_op_new(get_state(module), opcode, fd, &a);
}

static PyObject *make_op(PyObject *module, PyObject *args, PyObject *kwds, zk_opcode opcode) {
    static char *kwlist[] = {"fd", "arg", "offset", NULL};
    int fd;
    PyObject *arg;
    long long offset = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO|L", kwlist, &fd, &arg, &offset))
        return NULL;
    return new_op(module, opcode, fd, arg, NULL, offset, 0);
}

static PyObject *mod_op_read(PyObject *module, PyObject *args, PyObject *kwds) {
    return make_op(module, args, kwds, ZK_OP_READ);
}

static PyObject *mod_op_write(PyObject *module, PyObject *args, PyObject *kwds) {
    return make_op(module, args, kwds, ZK_OP_WRITE);
}

/* op_accept(fd), op_close(fd) */
static PyObject *mod_op_accept(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", NULL};
    int fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i:op_accept", kwlist, &fd))
        return NULL;
    return new_op(module, ZK_OP_ACCEPT, fd, NULL, NULL, 0, 0);
}

static PyObject *mod_op_close(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", NULL};
    int fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i:op_close", kwlist, &fd))
        return NULL;
    return new_op(module, ZK_OP_CLOSE, fd, NULL, NULL, 0, 0);
}

static PyObject *mod_op_connect(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "address", NULL};
    int fd;
    PyObject *address;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO:op_connect", kwlist, &fd, &address))
        return NULL;
    return new_op(module, ZK_OP_CONNECT, fd, NULL, address, 0, 0);
}

/* op_recv(fd, n, flags=0), op_recvmsg(fd, n, flags=0) */
static PyObject *recv_like(PyObject *module, PyObject *args, PyObject *kwds, zk_opcode opcode,
                           const char *fmt) {
    static char *kwlist[] = {"fd", "n", "flags", NULL};
    int fd, flags = 0;
    PyObject *n;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, &fd, &n, &flags))
        return NULL;
    return new_op(module, opcode, fd, n, NULL, 0, flags);
}

static PyObject *mod_op_recv(PyObject *module, PyObject *args, PyObject *kwds) {
    return recv_like(module, args, kwds, ZK_OP_RECV, "iO|i:op_recv");
}

static PyObject *mod_op_recvmsg(PyObject *module, PyObject *args, PyObject *kwds) {
    return recv_like(module, args, kwds, ZK_OP_RECVMSG, "iO|i:op_recvmsg");
}

static PyObject *mod_op_recv_into(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "buffer", "flags", "offset", NULL};
    int fd, flags = 0;
    PyObject *buffer;
    Py_ssize_t offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO|in:op_recv_into", kwlist, &fd, &buffer,
                                     &flags, &offset))
        return NULL;
    return new_op(module, ZK_OP_RECV_INTO, fd, buffer, NULL, offset, flags);
}

static PyObject *mod_op_send(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "data", "flags", "offset", NULL};
    int fd, flags = 0;
    PyObject *data;
    Py_ssize_t offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO|in:op_send", kwlist, &fd, &data, &flags,
                                     &offset))
        return NULL;
    return new_op(module, ZK_OP_SEND, fd, data, NULL, offset, flags);
}

static PyObject *mod_op_sendmsg(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "data", "address", "flags", NULL};
    int fd, flags = 0;
    PyObject *data, *address = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO|Oi:op_sendmsg", kwlist, &fd, &data,
                                     &address, &flags))
        return NULL;
    return new_op(module, ZK_OP_SENDMSG, fd, data, address, 0, flags);
}

static PyObject *mod_op_shutdown(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "how", NULL};
    int fd, how;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ii:op_shutdown", kwlist, &fd, &how))
        return NULL;
    return new_op(module, ZK_OP_SHUTDOWN, fd, NULL, NULL, 0, how);
}

static PyObject *mod_op_poll(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "events", NULL};
    int fd, events;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ii:op_poll", kwlist, &fd, &events))
        return NULL;
    return new_op(module, ZK_OP_POLL, fd, NULL, NULL, 0, events);
}

/* ---- files: zokio.fs (io/op.c's file rows) ------------------------------- */

/* op_read_into(fd, buffer, offset=-1) */
static PyObject *mod_op_read_into(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "buffer", "offset", NULL};
    int fd;
    PyObject *buffer;
    long long offset = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO|L:op_read_into", kwlist, &fd, &buffer,
                                     &offset))
        return NULL;
    return new_op(module, ZK_OP_READ_INTO, fd, buffer, NULL, offset, 0);
}

/* op_openat(path, flags, mode=0o666, dirfd=AT_FDCWD) */
static PyObject *mod_op_openat(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"path", "flags", "mode", "dirfd", NULL};
    PyObject *path;
    int flags, mode = 0666, dirfd = AT_FDCWD;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oi|ii:op_openat", kwlist, &path, &flags, &mode,
                                     &dirfd))
        return NULL;
    return new_op(module, ZK_OP_OPENAT, dirfd, path, NULL, mode, flags);
}

/* op_statx(path, fd=-1, follow_symlinks=True): of path, or of fd itself
 * when path is "" and fd >= 0. */
static PyObject *mod_op_statx(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"path", "fd", "follow_symlinks", NULL};
    PyObject *path;
    int fd = -1, follow = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|ip:op_statx", kwlist, &path, &fd, &follow))
        return NULL;
    int flags = AT_STATX_SYNC_AS_STAT | (follow ? 0 : AT_SYMLINK_NOFOLLOW);
    if (fd >= 0)
        flags |= AT_EMPTY_PATH;
    else
        fd = AT_FDCWD;
    return new_op(module, ZK_OP_STATX, fd, path, NULL, STATX_BASIC_STATS | STATX_BTIME, flags);
}

/* op_fsync(fd, datasync=False) */
static PyObject *mod_op_fsync(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "datasync", NULL};
    int fd, datasync = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|p:op_fsync", kwlist, &fd, &datasync))
        return NULL;
    return new_op(module, ZK_OP_FSYNC, fd, NULL, NULL, 0, datasync);
}

/* op_renameat(old, new, flags=0) */
static PyObject *mod_op_renameat(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"old", "new", "flags", NULL};
    PyObject *old, *new;
    int flags = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|i:op_renameat", kwlist, &old, &new, &flags))
        return NULL;
    return new_op(module, ZK_OP_RENAMEAT, AT_FDCWD, old, new, 0, flags);
}

/* op_unlinkat(path, rmdir=False) */
static PyObject *mod_op_unlinkat(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"path", "rmdir", NULL};
    PyObject *path;
    int rmdir = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|p:op_unlinkat", kwlist, &path, &rmdir))
        return NULL;
    return new_op(module, ZK_OP_UNLINKAT, AT_FDCWD, path, NULL, 0, rmdir ? AT_REMOVEDIR : 0);
}

/* op_mkdirat(path, mode=0o777) */
static PyObject *mod_op_mkdirat(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"path", "mode", NULL};
    PyObject *path;
    int mode = 0777;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|i:op_mkdirat", kwlist, &path, &mode))
        return NULL;
    return new_op(module, ZK_OP_MKDIRAT, AT_FDCWD, path, NULL, mode, 0);
}

/* fs_native(): the calling thread's port is io_uring and has every file
 * opcode; False elsewhere (epoll, no port, an older kernel). */
static PyObject *mod_fs_native(PyObject *module, PyObject *Py_UNUSED(ignored)) {
    ZK_UNUSED(module);
    zk_port *port = zk_port_current();
    if (port == NULL || zk_port_backend(port) != ZK_BACKEND_URING)
        Py_RETURN_FALSE;
    static const int file_ops[] = {ZK_OP_OPENAT, ZK_OP_STATX, ZK_OP_FSYNC, ZK_OP_RENAMEAT,
                                   ZK_OP_UNLINKAT, ZK_OP_MKDIRAT};
    for (size_t i = 0; i < sizeof file_ops / sizeof file_ops[0]; i++)
        if (!zk_port_uring_supports(file_ops[i]))
            Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

#define ZK_FS_METHODS \
    {"op_read_into", (PyCFunction)(void (*)(void))mod_op_read_into, METH_VARARGS | METH_KEYWORDS, \
     "op_read_into(fd, buffer, offset=-1) -> Op: bytes read into buffer (no copy); at the " \
     "file offset, or the file position when offset is -1."}, \
    {"op_openat", (PyCFunction)(void (*)(void))mod_op_openat, METH_VARARGS | METH_KEYWORDS, \
     "op_openat(path, flags, mode=0o666, dirfd=AT_FDCWD) -> Op: the new fd (O_CLOEXEC)."}, \
    {"op_statx", (PyCFunction)(void (*)(void))mod_op_statx, METH_VARARGS | METH_KEYWORDS, \
     "op_statx(path, fd=-1, follow_symlinks=True) -> Op: (mode, ino, dev, nlink, uid, gid, " \
     "size, atime_ns, mtime_ns, ctime_ns, blksize, blocks, rdev, btime_ns, attributes, mask); " \
     "of fd itself when path is '' and fd >= 0."}, \
    {"op_fsync", (PyCFunction)(void (*)(void))mod_op_fsync, METH_VARARGS | METH_KEYWORDS, \
     "op_fsync(fd, datasync=False) -> Op: None once fsync (fdatasync) returned."}, \
    {"op_renameat", (PyCFunction)(void (*)(void))mod_op_renameat, METH_VARARGS | METH_KEYWORDS, \
     "op_renameat(old, new, flags=0) -> Op: None (renameat2)."}, \
    {"op_unlinkat", (PyCFunction)(void (*)(void))mod_op_unlinkat, METH_VARARGS | METH_KEYWORDS, \
     "op_unlinkat(path, rmdir=False) -> Op: None (unlink, or rmdir)."}, \
    {"op_mkdirat", (PyCFunction)(void (*)(void))mod_op_mkdirat, METH_VARARGS | METH_KEYWORDS, \
     "op_mkdirat(path, mode=0o777) -> Op: None."}, \
    {"fs_native", (PyCFunction)mod_fs_native, METH_NOARGS, \
     "fs_native() -> bool: file ops run natively on this thread's port (io_uring with " \
     "every file opcode); else zokio.fs uses the blocking pool."},

/* ---- end of files ------------------------------------------------------------ */

/* cancel_fd_ops(fd): end the ops in flight on fd everywhere (-EBADF). */
static PyObject *mod_cancel_fd_ops(PyObject *module, PyObject *arg) {
    ZK_UNUSED(module);
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "cancel_fd_ops: bad fd %ld", fd);
        return NULL;
    }
    zk_op_cancel_fd((int)fd);
    Py_RETURN_NONE;
}

/* signal_pipe() -> fd; signal_install(signum); signal_restore(signum):
 * io/signal.c, used by zokio/signal.py. */
static PyObject *signal_result(int err, PyObject *ok) {
    if (err != 0) {
        Py_XDECREF(ok);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return ok;
}

static PyObject *mod_signal_pipe(PyObject *module, PyObject *Py_UNUSED(ignored)) {
    ZK_UNUSED(module);
    int fd = -1;
    int err = zk_signal_pipe(&fd);
    return signal_result(err, err ? NULL : PyLong_FromLong(fd));
}

static int signum_arg(PyObject *arg, int *out) {
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v <= 0 || v >= NSIG) {
        PyErr_Format(PyExc_ValueError, "signal number out of range: %ld", v);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static PyObject *mod_signal_install(PyObject *module, PyObject *arg) {
    ZK_UNUSED(module);
    int signum;
    if (signum_arg(arg, &signum) < 0)
        return NULL;
    return signal_result(zk_signal_install(signum), Py_NewRef(Py_None));
}

static PyObject *mod_signal_restore(PyObject *module, PyObject *arg) {
    ZK_UNUSED(module);
    int signum;
    if (signum_arg(arg, &signum) < 0)
        return NULL;
    return signal_result(zk_signal_restore(signum), Py_NewRef(Py_None));
}

static PyObject *mod_signal_after_fork(PyObject *module, PyObject *Py_UNUSED(ignored)) {
    ZK_UNUSED(module);
    zk_signal_after_fork_in_child();
    Py_RETURN_NONE;
}

/* port_stats(): the counters of the calling worker's completion port. */
static PyObject *mod_port_stats(PyObject *module, PyObject *Py_UNUSED(ignored)) {
    ZK_UNUSED(module);
    zk_port *port = zk_port_current();
    if (port == NULL)
        Py_RETURN_NONE;
    zk_port_stats st;
    zk_port_get_stats(port, &st);
    return Py_BuildValue("{s:s,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:n}", "backend",
                         zk_port_backend_name(zk_port_backend(port)), "submitted",
                         (unsigned long long)st.submitted, "completed",
                         (unsigned long long)st.completed, "enters",
                         (unsigned long long)st.enters, "sqes", (unsigned long long)st.sqes,
                         "ctls", (unsigned long long)st.ctls, "pbuf_used",
                         (unsigned long long)st.pbuf_used, "pbuf_misses",
                         (unsigned long long)st.pbuf_misses, "ms_accepts",
                         (unsigned long long)st.ms_accepts, "ms_arms",
                         (unsigned long long)st.ms_arms, "inflight",
                         (Py_ssize_t)zk_port_inflight(port));
}

static PyObject *mod_uring_available(PyObject *module, PyObject *Py_UNUSED(ignored)) {
    ZK_UNUSED(module);
    return PyBool_FromLong(zk_port_uring_available());
}

static PyObject *mod_resolve_backend(PyObject *module, PyObject *arg) {
    ZK_UNUSED(module);
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL)
        return NULL;
    zk_backend b;
    if (strcmp(name, "auto") == 0)
        b = ZK_BACKEND_AUTO;
    else if (strcmp(name, "io_uring") == 0)
        b = ZK_BACKEND_URING;
    else if (strcmp(name, "epoll") == 0)
        b = ZK_BACKEND_EPOLL;
    else {
        PyErr_Format(PyExc_ValueError, "backend must be 'auto', 'io_uring' or 'epoll', not %R", arg);
        return NULL;
    }
    return PyUnicode_FromString(zk_port_backend_name(zk_port_resolve_backend(b)));
}

static PyObject *mod_set_await_one(PyObject *module, PyObject *fn) {
    if (!PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "set_await_one needs a callable");
        return NULL;
    }
    Py_XSETREF(get_state(module)->await_one, Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"set_await_one", mod_set_await_one, METH_O,
     "set_await_one(fn): fn(awaitable) -> a coroutine awaiting it; spawn uses it for "
     "awaitables that are not coroutines."},
    {"spawn", (PyCFunction)(void (*)(void))mod_spawn, METH_FASTCALL | METH_KEYWORDS,
     "spawn(coro, *, name=None) -> JoinHandle: run coro as a new task on the "
     "current runtime."},
    {"yield_now", mod_yield_now, METH_NOARGS,
     "yield_now() -> awaitable: go once through the run queue (to the back)."},
    {"sleep", mod_sleep, METH_O,
     "sleep(seconds) -> awaitable: suspend the task for `seconds` (>= 0); "
     "1 ms resolution, never early."},
    {"sleep_until", mod_sleep_until, METH_O,
     "sleep_until(deadline) -> awaitable: suspend until monotonic() >= deadline."},
    {"monotonic", mod_monotonic, METH_NOARGS,
     "monotonic() -> float: seconds of CLOCK_MONOTONIC, zokio's clock."},
    {"spawn_blocking", (PyCFunction)(void (*)(void))mod_spawn_blocking,
     METH_VARARGS | METH_KEYWORDS,
     "spawn_blocking(fn, *args, **kwargs) -> awaitable: run fn on the blocking "
     "pool and await its result."},
    {"current_scheduler", mod_current_scheduler, METH_NOARGS, NULL},
    {"current_task", mod_current_task, METH_NOARGS, NULL},
    {"signal_pipe", (PyCFunction)mod_signal_pipe, METH_NOARGS,
     "signal_pipe() -> fd: the pipe zokio's signal handler writes signal numbers into."},
    {"signal_install", (PyCFunction)mod_signal_install, METH_O,
     "signal_install(signum): route signum to the signal pipe (any thread)."},
    {"signal_restore", (PyCFunction)mod_signal_restore, METH_O,
     "signal_restore(signum): put back the disposition signal_install replaced."},
    {"signal_after_fork", (PyCFunction)mod_signal_after_fork, METH_NOARGS,
     "signal_after_fork(): in a forked child, drop the parent's signal routing."},
    {"cancel_fd_ops", (PyCFunction)mod_cancel_fd_ops, METH_O,
     "cancel_fd_ops(fd): end every op in flight on fd, on every worker, with EBADF; "
     "the fd stays open.  Wakes a pending read or write of a pipe before closing it."},
    {"op_read", (PyCFunction)(void (*)(void))mod_op_read, METH_VARARGS | METH_KEYWORDS, NULL},
    {"op_write", (PyCFunction)(void (*)(void))mod_op_write, METH_VARARGS | METH_KEYWORDS, NULL},
#define OP_METHOD(name, doc) \
    {#name, (PyCFunction)(void (*)(void))mod_##name, METH_VARARGS | METH_KEYWORDS, doc}
    OP_METHOD(op_accept, "op_accept(fd) -> Op: (new_fd, address); the new fd is non-blocking "
                         "and close-on-exec."),
    OP_METHOD(op_connect, "op_connect(fd, address) -> Op: None once connected; a numeric "
                          "address in the socket module's form for the fd's family."),
    OP_METHOD(op_recv, "op_recv(fd, n, flags=0) -> Op: bytes (b'' at EOF)."),
    OP_METHOD(op_recv_into, "op_recv_into(fd, buffer, flags=0, offset=0) -> Op: bytes "
                            "received into buffer[offset:], no copy."),
    OP_METHOD(op_send, "op_send(fd, data, flags=0, offset=0) -> Op: bytes sent from "
                       "data[offset:] (MSG_NOSIGNAL always)."),
    OP_METHOD(op_recvmsg, "op_recvmsg(fd, n, flags=0) -> Op: (bytes, address, msg_flags)."),
    OP_METHOD(op_sendmsg, "op_sendmsg(fd, data, address=None, flags=0) -> Op: bytes sent."),
    OP_METHOD(op_shutdown, "op_shutdown(fd, how) -> Op: None."),
    OP_METHOD(op_close, "op_close(fd) -> Op: None.  Ops still waiting on fd, on any worker, "
                        "end with OSError(EBADF)."),
    OP_METHOD(op_poll, "op_poll(fd, events) -> Op: the revents (poll bits)."),
#undef OP_METHOD
    ZK_FS_METHODS
    {"port_stats", mod_port_stats, METH_NOARGS,
     "port_stats() -> dict | None: counters of the completion port of the worker "
     "thread calling it (None elsewhere): submitted, completed, enters "
     "(io_uring_enter or epoll_wait calls), sqes, ctls (epoll_ctl calls), inflight."},
    {"uring_available", mod_uring_available, METH_NOARGS, NULL},
    {"resolve_backend", mod_resolve_backend, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *module) {
    zk_state *st = get_state(module);
    st->str_throw = PyUnicode_InternFromString("throw");
    st->str_close = PyUnicode_InternFromString("close");
    if (st->str_throw == NULL || st->str_close == NULL)
        return -1;
    st->Cancelled = PyErr_NewExceptionWithDoc(
        "zokio.Cancelled",
        "Raised inside a task when it is cancelled (JoinHandle.cancel(), "
        "runtime shutdown) and by awaiting a cancelled task.  A BaseException, "
        "so 'except Exception' does not swallow it.",
        PyExc_BaseException, NULL);
    if (st->Cancelled == NULL || PyModule_AddObjectRef(module, "Cancelled", st->Cancelled) < 0)
        return -1;
    /* This order is also the order in which the worker looks up awaitable
     * kinds (zk_leaf_ops_of): JoinHandle first, then leaf.c's, then the Op. */
    if (zk_task_type_init(module, st) < 0 || zk_leaf_types_init(module, st) < 0 ||
        zk_op_leaf_type_init(module, st) < 0 || zk_sched_type_init(module, st) < 0)
        return -1;
    /* zokio.net's byte-stream fast path and busy token (io/stream.c). */
    if (zk_stream_types_init(module, st) < 0)
        return -1;
    /* zokio.sync: the wait list's Waiter (an awaitable kind) and the
     * primitives built on it (native/sync/). */
    if (zk_waitlist_types_init(module, st) < 0)
        return -1;
    /* zokio.timeout and CancelScope's enter/exit (sync/cancel_scope.c). */
    if (zk_cancel_scope_init(module, st) < 0)
        return -1;
    /* ---- channels (after the wait list's types) ---- */
    if (zk_channel_types_init(module, st) < 0)
        return -1;
    /* ---- end of channels ---- */
    return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg) {
    zk_state *st = get_state(module);
    Py_VISIT(st->TaskType);
    Py_VISIT(st->OneshotType);
    Py_VISIT(st->SleepType);
    Py_VISIT(st->OpType);
    Py_VISIT(st->TimeoutScopeType);
    Py_VISIT(st->YieldNowType);
    Py_VISIT(st->SchedulerType);
    Py_VISIT(st->WaiterType);  /* zokio.sync */
    Py_VISIT(st->Cancelled);
    Py_VISIT(st->yield_now);
    Py_VISIT(st->await_one);
    /* cancel scopes (structured concurrency) */
    Py_VISIT(st->scope_var);
    /* ---- channels ---- */
    if (zk_channel_state_traverse(st, visit, arg) < 0)
        return -1;
    /* ---- end of channels ---- */
    return 0;
}

static int module_clear(PyObject *module) {
    zk_state *st = get_state(module);
    Py_CLEAR(st->TaskType);
    Py_CLEAR(st->OneshotType);
    Py_CLEAR(st->SleepType);
    Py_CLEAR(st->OpType);
    Py_CLEAR(st->TimeoutScopeType);
    Py_CLEAR(st->YieldNowType);
    Py_CLEAR(st->SchedulerType);
    Py_CLEAR(st->WaiterType);  /* zokio.sync */
    Py_CLEAR(st->Cancelled);
    Py_CLEAR(st->yield_now);
    Py_CLEAR(st->await_one);
    Py_CLEAR(st->str_throw);
    Py_CLEAR(st->str_close);
    /* cancel scopes (structured concurrency) */
    Py_CLEAR(st->scope_var);
    Py_CLEAR(st->str_scope_attr);
    /* ---- channels ---- */
    zk_channel_state_clear(st);
    /* ---- end of channels ---- */
    /* They borrowed the types cleared above. */
    memset(st->leaf_kind_type, 0, sizeof(st->leaf_kind_type));
    memset(st->leaf_kind_ops, 0, sizeof(st->leaf_kind_ops));
    return 0;
}

static void module_free(void *module) {
    module_clear((PyObject *)module);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    /* The kernel does its own synchronisation (atomics, PyMutex); without
     * this slot, importing zokio would re-enable the GIL process-wide. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "zokio._native",
    .m_doc = "zokio's native kernel: tasks, scheduler, timers, completion ports.",
    .m_size = sizeof(zk_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__native(void) {
    return PyModuleDef_Init(&module_def);
}
