/* class_glue.h -- native fast paths on Python classes (class_glue.c).
 *
 * Some hot methods of classes written in Python are C (io/stream.c for
 * SocketStream, sync/cancel_scope.c for CancelScope): their install
 * functions put method descriptors on the class, and the methods read the
 * instance's __slots__ fields at offsets taken from the class's member
 * descriptors.  Loads are acquire loads of a borrowed reference, as
 * CPython's own member_get does on 3.13t; each caller says why the field
 * it reads cannot be freed under it.
 */
#ifndef ZOKIO_CLASS_GLUE_H
#define ZOKIO_CLASS_GLUE_H

#include "core/state.h"

/* The offset of __slots__ field `name` of cls; -1 with TypeError (naming
 * `who`) if cls has no such slot. */
int zk_slot_offset(PyObject *cls, const char *name, const char *who, Py_ssize_t *out);

/* Put one method descriptor per entry of `defs` (NULL-terminated) on cls. */
int zk_install_methods(PyObject *cls, PyMethodDef *defs);

/* The field at `off` of an instance: borrowed, possibly NULL (unset). */
static inline PyObject *zk_slot_load(PyObject *self, Py_ssize_t off) {
    return __atomic_load_n((PyObject **)((char *)self + off), __ATOMIC_ACQUIRE);
}

#endif
