/* channel.h -- the native mpsc channel (channel.c): Sender, Receiver and the
 * module functions zokio.sync builds its channels from. */
#ifndef ZOKIO_CHANNEL_H
#define ZOKIO_CHANNEL_H

#include "sync/waitlist.h"

/* Module init: the channel types and the functions mpsc_channel() and
 * _channel_errors().  After zk_waitlist_types_init. */
int zk_channel_types_init(PyObject *module, zk_state *st);
int zk_channel_state_traverse(zk_state *st, visitproc visit, void *arg);
void zk_channel_state_clear(zk_state *st);

#endif
