/* cancel_scope.h -- the hot path of zokio.CancelScope (cancel_scope.c):
 * zokio.timeout() and entering and leaving a scope without Python frames. */
#ifndef ZOKIO_CANCEL_SCOPE_H
#define ZOKIO_CANCEL_SCOPE_H

#include "core/state.h"

/* scope_install() and scope_timeout(); module init. */
int zk_cancel_scope_init(PyObject *module, zk_state *st);

#endif
