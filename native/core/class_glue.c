/* class_glue.c -- see class_glue.h. */
#include "core/class_glue.h"

#include <structmember.h>

int zk_slot_offset(PyObject *cls, const char *name, const char *who, Py_ssize_t *out) {
    PyObject *d = PyObject_GetAttrString(cls, name);
    if (d == NULL)
        return -1;
    int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) &&
             ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
    if (ok)
        *out = ((PyMemberDescrObject *)d)->d_member->offset;
    Py_DECREF(d);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s: %s is not a __slots__ field", who, name);
        return -1;
    }
    return 0;
}

int zk_install_methods(PyObject *cls, PyMethodDef *defs) {
    for (PyMethodDef *d = defs; d->ml_name != NULL; d++) {
        PyObject *descr = PyDescr_NewMethod((PyTypeObject *)cls, d);
        if (descr == NULL)
            return -1;
        int r = PyObject_SetAttrString(cls, d->ml_name, descr);
        Py_DECREF(descr);
        if (r < 0)
            return -1;
    }
    return 0;
}
